"""A worker woken onto the master's CPU moves off it (csrc/cn_omp.h, cn_leave_cpu): the
move happens, the thread's affinity is left as it was, and a thread bound to one CPU
stays put."""
import os
import threading

import pytest

from cyneuron._kernels import _openmp

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"),
                                reason="needs Linux thread affinity")


def _in_thread(fn):
    out = {}

    def run():
        out["value"] = fn()
    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out["value"]


def test_a_thread_on_a_cpu_it_should_leave_moves_and_keeps_its_affinity():
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        pytest.skip("one CPU: nowhere to move")

    def move():
        before_mask = os.sched_getaffinity(0)
        before, after = _openmp._leave_current_cpu_for_tests()
        return before, after, before_mask, os.sched_getaffinity(0)
    before, after, mask_before, mask_after = _in_thread(move)
    if before < 0:
        pytest.skip("sched_getcpu is not available")
    assert after != before and after in allowed
    assert mask_after == mask_before


def test_a_thread_bound_to_one_cpu_is_not_moved():
    cpu = min(os.sched_getaffinity(0))

    def bound():
        os.sched_setaffinity(0, {cpu})
        before, after = _openmp._leave_current_cpu_for_tests()
        return before, after, os.sched_getaffinity(0)
    before, after, mask = _in_thread(bound)
    assert mask == {cpu}
    if before >= 0:
        assert before == after == cpu
