"""The machinery of the vggrpo benchmarks (pytest-benchmark): fused ops vs ``vggrpo.reference``.

Its modules (bench/conftest.py holds the pytest side: options, the ``inputs``, ``bench_case``
and ``target_check`` fixtures, and the session-finish hooks that call into these):

* ``settings``: the results folder, the benchmark sizes (:data:`settings.SIZES`), the targets;
* ``inputs``: synthetic box-room videos with moving objects (so the scene-flow mask matters)
  and noisy predicted depths / point maps (so the per-view errors are realistic);
* ``calls``: a call timed as a rollout-style forward (no_grad) or as forward and backward;
* ``memory``: :func:`memory.peak_extra_memory`, the peak memory a call needs on top of what the
  process already holds (CPU: peak RSS via ``/proc``; CUDA: the caching allocator's peak), and
  the memory pass in a child process;
* ``machine``: the CPU, the build and the background load a measurement belongs to;
* ``targets``: the issue's target check, fused geometry reward vs the reference;
* ``report``: the results file ``bench/results/cpu-<machine>.json`` (written atomically), its
  chart, and the summary table of reference/fused ratios.

Timing and memory are measured in different processes, on purpose. The CPU memory probe needs
glibc to hand every big block straight back to the kernel (``mallopt(M_MMAP_THRESHOLD, 64 KiB)``)
so that the peak RSS follows the live allocations. In the timing process that setting would make
every large allocation page-fault afresh and slow the allocation-heavy reference down (measured
here: ~2x at the realistic size), flattering the fused ops; and memory read in the timing process
depends on what ran before (freed heap chunks get reused and fragment: the reference's reading
went from 47 MiB in a fresh process to 54-66 MiB after a timing loop). So the timing process keeps
glibc's default (warmed) allocator, and the memory readings come from a fresh child pytest process
(``--vggrpo-memory-pass``) that runs the same cases with the probe mode on from the start, at the
end of the session. See bench/README.md.
"""
