"""The runner's tally: the counts a job reports."""

import pyarrow as pa

from jobs.engine.tally import batch_digest, start_tally


def test_the_tally_counts_a_part_once_however_often_it_is_reported(ray_session):
    """A task Ray runs again (a retry, a block recomputed after a node loss) reports its
    part again: the report must count its rows once."""
    import ray

    tally = start_tally()
    tally.add.remote("batch:a", rows=4, rows_out=8, peak_actor_rss_mb=10.0)
    tally.add.remote("batch:b", rows=2, rows_out=4)
    tally.add.remote("batch:a", rows=4, rows_out=8, peak_actor_rss_mb=12.0)
    assert ray.get(tally.get.remote(), timeout=60) == {"rows": 6, "rows_out": 12, "peak_actor_rss_mb": 12.0}
    ray.kill(tally)


def test_a_batch_digest_names_its_rows_and_their_files():
    def batch(keys, source):
        return pa.table({"id": keys, "_source": [source] * len(keys)})

    assert batch_digest(batch(["a", "b"], "s0"), "id") == batch_digest(batch(["a", "b"], "s0"), "id")
    assert batch_digest(batch(["a", "b"], "s0"), "id") != batch_digest(batch(["a", "b"], "s1"), "id")
    assert batch_digest(batch(["a", "b"], "s0"), "id") != batch_digest(batch(["a"], "s0"), "id")
