"""What a deployed site tells the coordinator when it fails: a fixed code and non-private facts.

Flower forwards a ClientApp's exception text to the coordinator, and Confide's data errors quote
what they found (a label value, a record number, a file path, a column name), which a job could
use to pull a record's content out of a site (`data.label_field=text` made a label
error quote a record's text). A deployed site therefore raises ``SiteFailure`` instead: a code
from the error's kind, and the configuration keys the error named, taken from the closed list of
Confide's config keys and the site's node-config keys (so nothing of the site's data can pass).
A refusal by the site's own policy keeps its text: it is built from the policy's rules and the
job's own values. The full message goes to the site's own log only. Simulated sites, where the
researcher plays every party, keep the full message.
"""

from __future__ import annotations

import logging
import re

from common.config import flat_keys
from common.errors import ConfigError, DataError, PolicyRefused, UpdateError
from common.privacy.governance.policy import NODE_KEYS, POLICY_FILE_KEY
from common.schema import PIN_KEYS

log = logging.getLogger(__name__)

NODE_CONFIG_KEYS = ("site-name", "data-path", "data-format", "partition-id", "num-partitions", POLICY_FILE_KEY,
                    *NODE_KEYS, *PIN_KEYS)  # fmt: skip
CODES: tuple[tuple[type[BaseException], str, str], ...] = (
    (DataError, "data-error", "a check of the site's data failed"),
    (ConfigError, "config-error", "the site could not use the job's configuration"),
    (UpdateError, "update-error", "the site's update failed a check"),
)


class SiteFailure(Exception):
    """The only exception a deployed site's ClientApp lets reach Flower (and so the coordinator)."""

    def __init__(self, public: str, detail: str) -> None:
        super().__init__(public)
        self.detail = detail  # the full reason: for the site's own log and audit log, never sent


def public_failure(exc: BaseException, site: str) -> SiteFailure:
    """The failure a deployed site reports for ``exc``; the full reason is logged here."""
    detail = f"{type(exc).__name__}: {exc}"
    log.error("site '%s' failed (kept on this site): %s", site, detail)
    if isinstance(exc, PolicyRefused):  # the site's own rule and the job's values
        return SiteFailure(f"[policy-refused] {exc}", detail)
    code, what = next(((c, w) for kind, c, w in CODES if isinstance(exc, kind)), ("internal-error", "the site failed"))
    keys = named_keys(str(exc))
    named = f" (keys named: {', '.join(keys)})" if keys else ""
    return SiteFailure(f"site '{site}' [{code}]: {what}{named}; the full reason is in the site's own log", detail)


def named_keys(text: str) -> list[str]:
    """The configuration keys quoted in ``text`` ('data.label_field', 'data-path'), from the closed
    list of keys this code defines: nothing else of the text is kept."""
    quoted = set(re.findall(r"'([A-Za-z0-9_.\-]+)'", text))
    return sorted(quoted & (set(flat_keys()) | set(NODE_CONFIG_KEYS)))
