"""A site's pinned data schema: which columns of its own file a job may read, and its label set.

A deployed site may pin, in its node config, the text and label columns of its file and its label
set (the names, or their SHA-256). A job that asks for other columns or another label set is
refused before the site reads anything, naming the site's rule and the job's key (never the
pinned value: column names are the site's). Without pins a job may name any column; the site's
errors still carry no data (client/public_errors.py).

    flower-supernode ... --node-config "data-path='/data/train.csv' text-field='text' label-field='intent' \\
        labels-sha256='<sha256 of the label names joined by newlines, in order>'"
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.config import DataConfig
from common.errors import ConfigError, PolicyRefused

PIN_KEYS = ("text-field", "label-field", "labels", "labels-sha256")


def labels_digest(labels: tuple[str, ...] | list[str]) -> str:
    """SHA-256 of the label names joined by newlines, in the job's order (the order fixes the
    class indices, so it is part of the schema)."""
    return hashlib.sha256("\n".join(labels).encode()).hexdigest()


@dataclass(frozen=True)
class SchemaPins:
    text_field: str = ""
    label_field: str = ""
    labels: tuple[str, ...] = ()
    labels_sha256: str = ""

    @staticmethod
    def from_node_config(node_config: Mapping[str, Any]) -> SchemaPins:
        get = {k: str(node_config.get(k, "") or "").strip() for k in PIN_KEYS}
        if get["labels"] and get["labels-sha256"]:
            raise ConfigError("node config pins both 'labels' and 'labels-sha256': give one")
        digest = get["labels-sha256"].lower()
        if digest and (len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest)):
            raise ConfigError("node config 'labels-sha256' must be 64 hexadecimal characters")
        labels = tuple(x.strip() for x in get["labels"].split(",") if x.strip())
        return SchemaPins(get["text-field"], get["label-field"], labels, digest)

    def check(self, data: DataConfig, labels: tuple[str, ...], site: str) -> None:
        """Refuse a job whose data section (``labels``: the job's label set, configured or derived
        by the coordinator) asks for what the site did not pin."""
        if self.text_field and data.is_text and data.text_field != self.text_field:
            self._refuse(site, "text-field", f"data.text_field={data.text_field!r}")
        if self.label_field and data.label_field != self.label_field:
            self._refuse(site, "label-field", f"data.label_field={data.label_field!r}")
        if self.labels and tuple(labels) != self.labels:
            self._refuse(site, "labels", f"the label set {','.join(labels)!r}")
        if self.labels_sha256 and labels_digest(labels) != self.labels_sha256:
            self._refuse(site, "labels-sha256", f"the label set {','.join(labels)!r}")

    @staticmethod
    def _refuse(site: str, rule: str, asked: str) -> None:
        raise PolicyRefused(f"site '{site}' refuses the job: it asks for {asked}, not what the site pinned "
                            f"(node config '{rule}')")  # fmt: skip
