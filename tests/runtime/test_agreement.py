"""Ranks agree on one report of what is wrong before any of them exits."""

from __future__ import annotations

import pytest

from tests.dist import run_ranks
from titan_phases.runtime.agreement import agreed_report, combine_reports


def test_no_report_from_any_rank_means_nothing_to_report():
    assert combine_reports([None, None, None]) is None


def test_the_same_report_from_every_rank_is_printed_as_it_is():
    assert combine_reports(["bad lr", "bad lr"]) == "bad lr"


def test_ranks_that_disagree_are_named_with_what_each_found():
    report = combine_reports([None, "missing file", "bad lr", "missing file"])
    assert report.splitlines() == [
        "ranks found different problems; check that every node sees the same files:",
        "rank 0: no problem",
        "ranks 1, 3: missing file",
        "rank 2: bad lr",
    ]


def _agree(rank: int, world_size: int) -> str | None:
    return agreed_report(f"rank {rank} is unhappy" if rank == world_size - 1 else None)


@pytest.mark.e2e
def test_every_rank_gets_the_same_report_even_where_it_found_nothing():
    reports = run_ranks(_agree, 3)
    assert reports[0] == reports[1] == reports[2]
    assert reports[0].splitlines()[1:] == ["ranks 0, 1: no problem", "rank 2: rank 2 is unhappy"]


def test_without_a_process_group_the_report_is_this_ranks_own():
    assert agreed_report("only me") == "only me"
    assert agreed_report(None) is None
