"""What the services want of their topics, and how an existing topic differs from it (pure)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from provline.config import TopicSettings
from provline.topics import TopicSpec, TopicState, differences, wanted_topics


def test_every_topic_is_wanted_with_the_settings_partitions_and_the_lineage_topic_kept_forever() -> None:
    specs = {spec.name: spec for spec in wanted_topics(TopicSettings(prefix="p", partitions=6, retention_s=3600))}
    assert sorted(specs) == ["p.dlq.v1", "p.drift.v1", "p.inference.v1", "p.lineage.v1", "p.traces.v1"]
    assert {spec.partitions for spec in specs.values()} == {6}
    assert specs["p.lineage.v1"].config == {"retention.ms": "-1"}
    assert specs["p.inference.v1"].config == {"retention.ms": "3600000"}
    assert specs["p.inference.v1"].copartitioned and not specs["p.traces.v1"].copartitioned
    assert [spec.name for spec in wanted_topics(TopicSettings(prefix="p"), ["p.inference.v1"])] == ["p.inference.v1"]


def test_unset_retention_and_replication_are_the_brokers_and_never_differ() -> None:
    spec = wanted_topics(TopicSettings(prefix="p"), ["p.traces.v1"])[0]
    assert spec.config == {} and spec.replication_factor == -1
    assert differences(spec, TopicState("p.traces.v1", 4, 3, {"retention.ms": "604800000"})) == []


def test_each_difference_names_the_setting_that_would_match_it() -> None:
    spec = TopicSpec("p.lineage.v1", 4, 3, {"retention.ms": "-1"}, copartitioned=True)
    found = differences(spec, TopicState("p.lineage.v1", 2, 1, {"retention.ms": "604800000"}))
    assert len(found) == 3
    assert "PROVLINE_TOPICS__PARTITIONS" in found[0] and "2 partitions" in found[0]
    assert "PROVLINE_TOPICS__REPLICATION_FACTOR" in found[1]
    assert "PROVLINE_TOPICS__LINEAGE_RETENTION_S" in found[2] and "604800000" in found[2]


def test_min_insync_replicas_goes_to_every_topic_and_its_difference_names_its_setting() -> None:
    specs = wanted_topics(TopicSettings(prefix="p", replication_factor=3, min_insync_replicas=2))
    assert all(spec.config["min.insync.replicas"] == "2" for spec in specs)
    assert specs[0].config["retention.ms"] == "-1"  # the lineage topic keeps its retention beside it
    found = differences(specs[1], TopicState(specs[1].name, 4, 3, {"min.insync.replicas": "1"}))
    assert len(found) == 1 and "PROVLINE_TOPICS__MIN_INSYNC_REPLICAS" in found[0]
    assert "min.insync.replicas" not in wanted_topics(TopicSettings(prefix="p"))[1].config


def test_more_insync_replicas_than_replicas_is_refused() -> None:
    with pytest.raises(ValidationError, match="PROVLINE_TOPICS__MIN_INSYNC_REPLICAS"):
        TopicSettings(replication_factor=2, min_insync_replicas=3)
    TopicSettings(min_insync_replicas=3)  # -1: the cluster's default, which the settings cannot check
