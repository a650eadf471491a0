"""Metrics derived from jobs and audit events (pure functions)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from web.metrics import Snapshot, families, histogram_buckets, summarise


def test_summarise_counts_states_steps_deliveries_and_audited_instances():
    jobs = [
        {"state": "delivered", "source": "dicom", "steps": [{"step": "segment", "elapsed_s": 3.0}],
         "deliveries": [{"peer": "PACS", "ok": False}, {"peer": "PACS", "ok": True}]},
        {"state": "failed", "source": "upload", "steps": [{"step": "segment", "elapsed_s": 70.0},
                                                          {"step": "send", "elapsed_s": None}]},
    ]  # fmt: skip
    audit = [
        {"event": "instances_received", "detail": {"count": 120, "calling_ae": "MR1"}},
        {"event": "instances_received", "detail": {"count": 5, "calling_ae": "MR1"}},
        {"event": "instances_rejected", "detail": {"count": 2, "reason": "sop_class"}},
        {"event": "association_rejected", "detail": {"reason": "calling AE not allowed"}},
        {"event": "job_created", "detail": {}},
    ]
    snap = summarise(jobs, audit)
    assert snap.jobs_by_state["delivered"] == 1 and snap.jobs_by_state["queued"] == 0
    assert snap.studies_by_source == {"dicom": 1, "upload": 1}
    assert snap.completed == 1
    assert snap.step_durations_s == {"segment": [3.0, 70.0]}
    assert snap.deliveries == {("PACS", "failed"): 1, ("PACS", "ok"): 1}
    assert snap.received == {"MR1": 125}
    assert snap.rejected == {"sop_class": 2, "association: calling AE not allowed": 1}


def test_histogram_buckets_are_cumulative():
    buckets = dict(histogram_buckets([0.2, 3.0, 70.0]))
    assert buckets["0.5"] == 1 and buckets["5"] == 2 and buckets["60"] == 2 and buckets["+Inf"] == 3


def test_families_render_as_valid_prometheus_text():
    from prometheus_client import CollectorRegistry, generate_latest

    snap = Snapshot(jobs_by_state={"running": 2}, step_durations_s={"prepare": [1.0]},
                    queue_depth={"gliomaseg.cpu": 4}, rejected={"sop_class": 1})  # fmt: skip

    class C:
        def collect(self):
            return families(snap)

    reg = CollectorRegistry(auto_describe=False)
    reg.register(C())
    parsed = {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}
    assert parsed["gliomaseg_queue_depth"].samples[0].value == 4
    assert parsed["gliomaseg_jobs"].samples[0].labels == {"state": "running"}
    assert parsed["gliomaseg_step_duration_seconds"].type == "histogram"
    assert parsed["gliomaseg_instances_rejected"].type == "counter"


def test_collector_reads_only_changed_jobs_and_sees_every_change(tmp_path):
    from dicom_node.jobs import JobState, JobStore
    from web.metrics import JobsCollector

    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    a = store.create("1.1", calling_ae="A", calling_ip="1.1.1.1")
    b = store.create("1.2", calling_ae="A", calling_ip="1.1.1.1", source="upload")
    collector = JobsCollector(store, "memory://", [], cache_s=0)
    first = collector.snapshot()
    assert first.jobs_by_state["waiting"] == 2 and first.studies_by_source == {
        "dicom": 1,
        "upload": 1,
    }
    store.add_step(a.id, {"step": "segment", "elapsed_s": 12.5})
    store.update(b.id, deliveries=[{"peer": "PACS", "ok": True}])
    store.set_state(b.id, JobState.delivered)
    second = collector.snapshot()
    assert second.jobs_by_state["waiting"] == 1 and second.jobs_by_state["delivered"] == 1
    assert second.step_durations_s == {"segment": [12.5]}
    assert second.deliveries == {("PACS", "ok"): 1}
    assert len(collector._rows) == 2
