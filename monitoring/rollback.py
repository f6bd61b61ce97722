"""The guard: a challenger's way up to the champion alias, and a new champion's way back.

One state machine that the monitor ticks on event time, with the frames it holds; the checks
and verdicts are `monitoring.canary`'s. Everything it does is a verb a person has (DESIGN.md
§6): ``POST /admin/canary`` and ``POST /admin/reload`` on every scoring process, with the
admin token, and `models.registry.promote` / `rollback` (which write the alias log and the
audit trail themselves).

::

    shadow ──pass, held──▶ canary 5 % ──▶ 25 % ──▶ 50 % ──pass, held──▶ promote ──▶ watch
      │ fail                  │ fail at any step: canary 0 on every      │ fail: rollback,
      ▼                       ▼ process at once, champion untouched       ▼ reload everywhere
    stopped ◀─────────────────┘                                   (the predecessor serves)

* **Shadow**: a new challenger scores every champion row in shadow, so the paired checks run
  before it decides anything; a pass held for ``hold`` (and ``min_rows`` paired rows) gives
  it the first step. A failure stops it there, never given a share.
* **Steps** (Flagger's ``stepWeights``): each needs a pass on its own window (rows since the
  step, event time), held for ``hold`` with ``min_rows`` per arm. A critical failure sets
  the share to 0 at once; a marginal verdict holds the step, and is stopped after
  ``max_marginal``. A stopped (or rolled back) version is never given a share again by the
  guard; a person can still give it one, and the guard then judges it as any canary.
* **Promotion**: canary 0, ``promote(challenger → champion)``, the old champion becomes the
  ``challenger`` (``keep_predecessor``): it keeps shadowing, so the watch compares paired,
  and the guard never gives a former champion a canary.
* **Watch** (issue section 5), after any champion change, by the guard or by hand: the new
  champion against its predecessor, paired while the predecessor shadows, else against the
  predecessor's ``baseline`` window before the change (unpaired: the score distribution,
  review and decline rates, errors, latency). Past ``watch_hold`` it relaxes to the matured
  precision and cost, which labels settle weeks later. A failure: ``rollback`` and a reload
  of every process. **Never a loop**: a champion change made by a rollback (the guard's or a
  person's) is not watched, so a restored version is never rolled back on the evidence that
  restored it; the rolled-back version is blocked.

Changes made by a person are followed, not fought: a share set by hand is adopted as a step
(0 by hand: the challenger is stopped and not restarted), a champion promoted by hand is
watched. A process that reports another share than the guard's (restarted, it starts from
its settings) is set back to the guard's.

Restart: `state_dict()` is JSON; the monitor checkpoints it with its offsets and rebuilds the
guard with `Guard.from_state`. Times in it are event time (ISO), never the wall clock.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pandas as pd

from core.settings import Settings
from monitoring import audit
from monitoring.canary import (
    CANDIDATE,
    FAIL,
    MARGINAL,
    PAIRED,
    PASS,
    REFERENCE,
    Arm,
    Check,
    Evaluation,
    GuardConfig,
    arm_rows,
    evaluate,
    paired_rows,
    read_arm,
    window,
)
from monitoring.metrics import MonitorMetrics

log = logging.getLogger(__name__)

ACTOR = "monitor"
IDLE, SHADOW, CANARY, STOPPED = "idle", "shadow", "canary", "stopped"
MATURED_CHECKS = ("precision", "cost")


@dataclass(frozen=True)
class Serving:
    """What is deployed: the aliases' versions (with their thresholds) and each process's share."""

    champion: Arm | None
    challenger: Arm | None
    percents: dict[str, float | None]  # scoring URL -> canary share it reports (None: unreachable)
    former_champions: frozenset[str] = frozenset()  # every version the alias log shows as champion
    last_champion_move: str | None = None  # "promote" or "rollback": the alias log's latest for champion


class ScoringAdmin:
    """Every scoring process's admin API, called as a person would (bearer token)."""

    def __init__(self, urls: Sequence[str], token: str, timeout_s: float = 5.0) -> None:
        self.urls = [u.rstrip("/") for u in urls]
        self.headers = {"authorization": f"Bearer {token}"}
        self.timeout_s = timeout_s

    def percents(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for url in self.urls:
            try:
                out[url] = float(
                    httpx.get(f"{url}/v1/model", timeout=self.timeout_s).json()["canary_percent"]
                )
            except (httpx.HTTPError, ValueError, KeyError) as error:
                log.warning("%s: no canary share read: %s", url, error)
                out[url] = None
        return out

    def _post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST to every process; returns url -> its answer or {"error": ...}. Never stops at one."""
        answers: dict[str, Any] = {}
        for url in self.urls:
            try:
                response = httpx.post(f"{url}{path}", json=body, headers=self.headers, timeout=self.timeout_s)
                response.raise_for_status()
                answers[url] = response.json()
            except httpx.HTTPError as error:
                log.error("%s%s failed: %s", url, path, error)
                answers[url] = {"error": f"{type(error).__name__}: {error}"}
        return answers

    def set_canary(self, percent: float) -> dict[str, Any]:
        return self._post("/admin/canary", {"percent": float(percent)})

    def reload(self) -> dict[str, Any]:
        return self._post("/admin/reload")


@dataclass
class GuardState:
    """Everything the guard remembers between ticks (JSON through `asdict`)."""

    phase: str = IDLE
    champion: str | None = None
    challenger: str | None = None
    percent: float = 0.0
    since: str | None = None  # event time the current phase's window starts after
    marginal_since: str | None = None  # event time the verdict turned marginal after its hold
    blocked: list[str] = field(default_factory=list)  # never given a share again by the guard
    watch: dict[str, Any] | None = None  # version, predecessor, since, fast_done
    own_move: str | None = None  # the champion version the guard itself just set
    last_now: str | None = None


@dataclass(frozen=True)
class Action:
    """One thing to do: ``canary`` (set the share everywhere), ``promote``, ``rollback``, ``reload``."""

    kind: str
    reason: str
    percent: float | None = None
    version: str | None = None
    predecessor: str | None = None
    audit_as: str | None = None  # canary_step / canary_stop (promote and rollback audit themselves)
    check: str | None = None  # a rollback's first failing check (the metric's reason)
    numbers: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, {})}


def _iso(moment: datetime | pd.Timestamp | None) -> str | None:
    return None if moment is None else pd.Timestamp(moment).isoformat()


def _ts(value: str | None) -> pd.Timestamp | None:
    return None if value is None else pd.Timestamp(value)


def describe(checks: Sequence[Check]) -> str:
    """The failing or marginal checks in one line: what a person reads in the audit trail."""
    parts = []
    for c in checks:
        kind = "critical" if c.critical else "non-critical"
        value = "?" if c.value is None else f"{c.value:.4g}"
        threshold = "?" if c.threshold is None else f"{c.threshold:.4g}"
        parts.append(f"{c.name} {c.outcome} ({kind}): {value} against {threshold}")
    return "; ".join(parts) if parts else "no check failed"


def _numbers(evaluation: Evaluation, now: pd.Timestamp) -> dict[str, Any]:
    return {
        "event_time": _iso(now),
        "verdict": evaluation.verdict,
        "rows": evaluation.rows,
        "checks": {c.name: c.as_dict() for c in evaluation.checks if c.outcome != "pending"},
    }


class Guard:
    """Ticked by the monitor: ``report = guard.tick(predictions, labels, now)``."""

    def __init__(
        self,
        settings: Settings,
        config: GuardConfig | None = None,
        urls: Sequence[str] | None = None,
        metrics: MonitorMetrics | None = None,
        state: GuardState | None = None,
    ) -> None:
        self.settings = settings
        self.config = config or GuardConfig()
        self.admin = ScoringAdmin(urls if urls is not None else settings.scoring_urls, settings.admin_token)
        self.metrics = metrics
        self.state = state or GuardState()
        self._arms: dict[str, Arm] = {}

    # --- restart -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return asdict(self.state)

    @classmethod
    def from_state(
        cls,
        settings: Settings,
        state: dict[str, Any] | None,
        config: GuardConfig | None = None,
        urls: Sequence[str] | None = None,
        metrics: MonitorMetrics | None = None,
    ) -> Guard:
        return cls(settings, config, urls, metrics, GuardState(**state) if state else None)

    # --- what is deployed ----------------------------------------------------------------
    def arm(self, version: str) -> Arm:
        if version not in self._arms:
            self._arms[version] = read_arm(self.settings, version)
        return self._arms[version]

    def observe(self) -> Serving:
        """The aliases and alias log (MLflow) and every process's share (``GET /v1/model``)."""
        from models import registry

        client = registry.connect(self.settings)
        champion = registry.current_version(client, registry.CHAMPION)
        challenger = registry.current_version(client, registry.CHALLENGER)
        moves = [e for e in registry.alias_log(client) if e["alias"] == registry.CHAMPION]
        return Serving(
            champion=self.arm(champion) if champion else None,
            challenger=self.arm(challenger) if challenger else None,
            percents=self.admin.percents(),
            former_champions=frozenset(str(v) for e in moves for v in (e["from"], e["to"]) if v),
            last_champion_move=moves[-1]["action"] if moves else None,
        )

    # --- one tick --------------------------------------------------------------------------
    def tick(
        self,
        predictions: pd.DataFrame,
        labels: pd.DataFrame | None,
        now: datetime | pd.Timestamp,
        serving: Serving | None = None,
    ) -> dict[str, Any]:
        """Evaluate, decide and act; returns the JSON-able report (the monitor's page, ``--json``)."""
        serving = serving or self.observe()
        before = copy.deepcopy(self.state)
        actions, report = self.plan(predictions, labels, now, serving)
        report["actions"] = self._act(actions, before, pd.Timestamp(now), report)
        report.update(phase=self.state.phase, canary_percent=self.state.percent, champion=self.state.champion)
        if self.metrics is not None:
            verdict = report["canary"]["verdict"] if report.get("canary") else None
            if verdict is None and report.get("watch"):
                verdict = report["watch"]["verdict"]
            self.metrics.set_canary(self.state.percent, verdict)
        return report

    def plan(
        self,
        predictions: pd.DataFrame,
        labels: pd.DataFrame | None,
        now: datetime | pd.Timestamp,
        serving: Serving,
    ) -> tuple[list[Action], dict[str, Any]]:
        """Update the state from ``serving`` and the checks; the actions to take. No I/O but
        the registry reads of a version not seen before (`arm`)."""
        now = pd.Timestamp(now)
        notes: list[str] = []
        for arm in (serving.champion, serving.challenger):
            if arm is not None:
                self._arms.setdefault(arm.version, arm)
        self._follow_aliases(serving, notes)
        actions = self._follow_percent(serving, now, notes)
        report: dict[str, Any] = {"now": _iso(now), "notes": notes, "errors": []}
        watched = copy.deepcopy(self.state.watch)
        if watched is not None:
            evaluation, more = self._watch(predictions, labels, now, serving)
            actions += more
            report["watch"] = watched | evaluation.as_dict() | {"open": self.state.watch is not None}
        # After a rollback this tick, `serving` no longer describes what will serve: next tick.
        rolled_back = any(a.kind == "rollback" for a in actions)
        if self.state.phase in (SHADOW, CANARY) and not self._fast_watch() and not rolled_back:
            since, phase = self.state.since, self.state.phase
            evaluation, more = self._canary(predictions, labels, now, serving)
            actions += more
            report["canary"] = evaluation.as_dict() | {"since": since, "phase": phase}
        report.update(challenger=self.state.challenger, blocked=list(self.state.blocked))
        self.state.last_now = _iso(now)
        return actions, report

    def _fast_watch(self) -> bool:
        return self.state.watch is not None and not self.state.watch["fast_done"]

    # --- following the aliases and the share -----------------------------------------------
    def _follow_aliases(self, serving: Serving, notes: list[str]) -> None:
        s = self.state
        champion = serving.champion.version if serving.champion else None
        challenger = serving.challenger.version if serving.challenger else None
        if champion == s.own_move:
            s.own_move = None  # the guard's own move, now seen in the registry
        champion_moved = champion != s.champion
        if champion_moved:
            if s.champion is not None and champion is not None and s.own_move != champion:
                if serving.last_champion_move == "rollback":
                    notes.append(f"champion {champion} restored by a rollback: not watched")
                    s.watch = None
                else:
                    notes.append(f"champion changed by hand, {s.champion} -> {champion}: watching it")
                    s.watch = {
                        "version": champion,
                        "predecessor": s.champion,
                        "since": s.last_now,
                        "fast_done": False,
                    }
                    if self.config.keep_predecessor and challenger != s.champion:
                        # As after its own promotions: the predecessor shadows, so the watch
                        # compares on the same rows (a hand promotion leaves it unscored).
                        errors: dict[str, Any] = {"errors": []}
                        self._keep_predecessor(s.champion, champion, errors)
                        notes.extend(errors["errors"])
                        challenger = s.champion
            s.champion, s.own_move = champion, None
            if s.watch is not None and s.watch["version"] != champion:
                s.watch = None
        if champion_moved or challenger != s.challenger:
            s.challenger = challenger
            s.since, s.marginal_since = s.last_now, None
            former = challenger in serving.former_champions
            if champion is None or challenger is None or challenger == champion or former:
                s.phase = IDLE  # nothing to roll out (a former champion shadows for the watch)
            elif challenger in s.blocked:
                s.phase = STOPPED
            elif s.percent > 0:  # a share is live: the new pair is a canary from now on
                s.phase = CANARY
                notes.append(f"challenger {challenger} takes over the {s.percent:g}% canary")
            else:
                s.phase = SHADOW
                notes.append(f"challenger {challenger} in shadow")

    def _follow_percent(self, serving: Serving, now: pd.Timestamp, notes: list[str]) -> list[Action]:
        s = self.state
        seen = {p for p in serving.percents.values() if p is not None}
        if not seen:
            notes.append("no scoring process answered")
            return []
        if seen == {s.percent}:
            return []
        if s.percent in seen:  # some process differs (restarted from its settings): set it back
            notes.append(f"a process reports another canary share than {s.percent}%: set again")
            return [Action("canary", "re-assert the guard's share", percent=s.percent)]
        percent = max(seen)
        notes.append(f"canary share changed by hand: {s.percent}% -> {percent}%")
        s.percent = percent
        if percent == 0:
            if s.phase == CANARY and s.challenger is not None:
                s.phase = STOPPED
                self._block(s.challenger)
        elif s.challenger is not None and s.challenger != s.champion:
            s.phase, s.since, s.marginal_since = CANARY, s.last_now, None
        return [] if len(seen) == 1 else [Action("canary", "one share on every process", percent=percent)]

    def _block(self, version: str) -> None:
        if version not in self.state.blocked:
            self.state.blocked.append(version)

    # --- the canary ------------------------------------------------------------------------
    def _canary(
        self, predictions: pd.DataFrame, labels: pd.DataFrame | None, now: pd.Timestamp, serving: Serving
    ) -> tuple[Evaluation, list[Action]]:
        s, config = self.state, self.config
        assert serving.champion is not None and serving.challenger is not None
        champion, challenger = serving.champion, serving.challenger
        rows = window(predictions, _ts(s.since), now)
        shadow = s.phase == SHADOW
        evaluation = evaluate(
            config,
            champion,
            challenger,
            reference_rows=arm_rows(rows, champion.version, canary=False, percent=s.percent),
            candidate_rows=rows.iloc[:0]
            if shadow
            else arm_rows(rows, challenger.version, canary=True, percent=s.percent),
            pairs=paired_rows(rows, champion.version, challenger.version),
            labels=labels,
            now=now,
            needs=(PAIRED,) if shadow else (REFERENCE, CANDIDATE),
        )
        self._count_failures(evaluation)
        # The phase started at `since`; with none (a first tick), at the window's first row.
        start = pd.Timestamp(s.since) if s.since else (rows["event_time"].min() if len(rows) else now)
        held = now - start >= config.hold
        versions = f"challenger {challenger.version} against champion {champion.version}"
        if evaluation.verdict == FAIL or self._marginal_too_long(evaluation, held, now):
            why = describe([c for c in evaluation.checks if c.outcome in (FAIL, MARGINAL)])
            where = "in shadow" if shadow else f"at {s.percent:g}%"
            reason = f"{versions} {where}: {why}"
            action = Action(
                "canary", reason, percent=0.0, audit_as="canary_stop", numbers=_numbers(evaluation, now)
            )
            action.numbers["percent_from"] = s.percent
            s.phase, s.percent, s.marginal_since = STOPPED, 0.0, None
            self._block(challenger.version)
            return evaluation, [action]
        if evaluation.verdict != PASS or not held:
            return evaluation, []
        if shadow and (not config.start_from_shadow or challenger.version in s.blocked):
            return evaluation, []
        following = [step for step in config.steps if step > s.percent]
        if following:
            numbers = _numbers(evaluation, now) | {"percent_from": s.percent}
            held = (now - start) / pd.Timedelta(hours=1)
            reason = f"{versions}: every check passed for {held:.0f} h at {s.percent:g}%"
            s.phase, s.percent, s.since = CANARY, following[0], _iso(now)
            return evaluation, [
                Action("canary", reason, percent=following[0], audit_as="canary_step", numbers=numbers)
            ]
        return evaluation, self._promote(champion, challenger, evaluation, now)

    def _marginal_too_long(self, evaluation: Evaluation, held: bool, now: pd.Timestamp) -> bool:
        s = self.state
        if evaluation.verdict != MARGINAL or not held:
            if evaluation.verdict == PASS:
                s.marginal_since = None
            return False
        if s.marginal_since is None:
            s.marginal_since = _iso(now)
        return now - pd.Timestamp(s.marginal_since) >= self.config.max_marginal

    def _promote(
        self, champion: Arm, challenger: Arm, evaluation: Evaluation, now: pd.Timestamp
    ) -> list[Action]:
        s = self.state
        steps = ", ".join(f"{p:g}" for p in self.config.steps)
        reason = (
            f"canary passed every check at {steps}% (last window: {evaluation.rows[CANDIDATE]} canary rows)"
        )
        predecessor = champion.version if self.config.keep_predecessor else None
        actions = [
            Action("canary", "promotion: the champion decides every card", percent=0.0),
            Action(
                "promote",
                reason,
                version=challenger.version,
                predecessor=predecessor,
                numbers=_numbers(evaluation, now),
            ),
            Action("reload", f"serve champion {challenger.version}"),
        ]
        s.champion, s.own_move, s.percent = challenger.version, challenger.version, 0.0
        s.challenger = predecessor or challenger.version
        s.phase, s.since, s.marginal_since = IDLE, _iso(now), None
        s.watch = {
            "version": challenger.version,
            "predecessor": champion.version,
            "since": _iso(now),
            "fast_done": False,
        }
        return actions

    # --- the watch after a champion change -------------------------------------------------
    def _watch(
        self, predictions: pd.DataFrame, labels: pd.DataFrame | None, now: pd.Timestamp, serving: Serving
    ) -> tuple[Evaluation, list[Action]]:
        s, config = self.state, self.config
        assert s.watch is not None
        version, predecessor = s.watch["version"], s.watch["predecessor"]
        since = _ts(s.watch["since"])
        rows = window(predictions, since, now)
        shadowing = serving.challenger is not None and serving.challenger.version == predecessor
        before = window(predictions, None if since is None else since - config.baseline, since or now)
        evaluation = evaluate(
            config,
            self.arm(predecessor),
            self.arm(version),
            reference_rows=arm_rows(before, predecessor, canary=False, percent=0.0),
            candidate_rows=arm_rows(rows, version, canary=False, percent=s.percent),
            pairs=paired_rows(rows, predecessor, version) if shadowing else None,
            labels=labels,
            now=now,
            needs=(CANDIDATE, PAIRED) if shadowing else (CANDIDATE, REFERENCE),
        )
        self._count_failures(evaluation)
        judged = [c for c in evaluation.checks if s.watch["fast_done"] is False or c.name in MATURED_CHECKS]
        failing = [c for c in judged if c.critical and c.outcome == FAIL]
        if evaluation.verdict == FAIL and failing:
            return evaluation, self._roll_back(version, predecessor, failing, evaluation, now)
        held = since is None or now - since >= config.watch_hold
        # Past its hold the fast watch ends on a pass, or on a marginal verdict that lasted
        # `max_marginal` more (not evidence enough to roll back); the matured checks go on.
        if not s.watch["fast_done"] and held and evaluation.verdict in (PASS, MARGINAL):
            benefit = since is not None and now - since >= config.watch_hold + config.max_marginal
            if evaluation.verdict == PASS or benefit:
                s.watch["fast_done"] = True
                s.watch["confirmed_at"] = _iso(now)
        matured = {c.name: c.outcome for c in evaluation.checks if c.name in MATURED_CHECKS}
        if (
            s.watch["fast_done"]
            and evaluation.verdict != "pending"
            and all(o == PASS for o in matured.values())
        ):
            s.watch = None  # precision and cost settled too: nothing left to watch
        return evaluation, []

    def _roll_back(
        self, version: str, predecessor: str, failing: list[Check], evaluation: Evaluation, now: pd.Timestamp
    ) -> list[Action]:
        s = self.state
        reason = f"champion {version} against its predecessor {predecessor}: {describe(failing)}"
        actions = []
        if s.percent > 0:
            actions.append(Action("canary", "rollback: the champion decides every card", percent=0.0))
        actions += [
            Action(
                "rollback",
                reason,
                version=version,
                predecessor=predecessor,
                check=failing[0].name,
                numbers=_numbers(evaluation, now),
            ),
            Action("reload", f"serve champion {predecessor} again"),
        ]
        self._block(version)
        s.champion, s.own_move, s.watch, s.percent = predecessor, predecessor, None, 0.0
        if s.phase in (SHADOW, CANARY):
            s.phase = STOPPED if s.challenger == version else s.phase
        return actions

    def _count_failures(self, evaluation: Evaluation) -> None:
        if self.metrics is None or evaluation.verdict == "pending":
            return
        for check in evaluation.failing():
            self.metrics.count_check_failure(check.name)

    # --- acting ------------------------------------------------------------------------------
    def _act(
        self, actions: list[Action], before: GuardState, now: pd.Timestamp, report: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Run the actions in order. A registry step that fails stops the rest: the state goes
        back to before the tick, at the share the processes were last given."""
        from models import registry

        done: list[dict[str, Any]] = []
        versions = {"champion": self.state.champion, "challenger": self.state.challenger}
        set_percent: float | None = None
        for action in actions:
            entry = action.as_dict()
            try:
                if action.kind == "canary":
                    assert action.percent is not None
                    entry["answers"] = self.admin.set_canary(action.percent)
                    set_percent = action.percent
                    self._report_answers(action.kind, entry["answers"], report)
                    if action.audit_as:
                        versions = {"champion": before.champion, "challenger": before.challenger}
                        audit.record(
                            self.settings,
                            action.audit_as,
                            action.reason,
                            actor=ACTOR,
                            versions=versions,
                            numbers=action.numbers,
                        )
                        self._count_action(action.audit_as)
                elif action.kind == "promote":
                    assert action.version is not None
                    registry.promote(
                        self.settings, action.version, registry.CHAMPION, action.reason, by=ACTOR
                    )
                    self._count_action("promote")
                    if action.predecessor:
                        self._keep_predecessor(action.predecessor, action.version, report)
                elif action.kind == "rollback":
                    moved = registry.rollback(self.settings, action.reason, by=ACTOR)
                    self.state.champion = self.state.own_move = moved["to"]
                    self._count_action("rollback")
                    if self.metrics is not None and action.check is not None:
                        self.metrics.count_rollback(action.check)
                elif action.kind == "reload":
                    entry["answers"] = self.admin.reload()
                    self._report_answers(action.kind, entry["answers"], report)
            except Exception as error:  # the registry refused: nothing after this step is done
                log.exception("guard action %s failed", action.kind)
                report["errors"].append(f"{action.kind}: {type(error).__name__}: {error}")
                entry["error"] = str(error)
                done.append(entry)
                self._restore(before, set_percent, now)
                break
            done.append(entry)
        return done

    @staticmethod
    def _report_answers(kind: str, answers: dict[str, Any], report: dict[str, Any]) -> None:
        """A process that did not answer (the next tick sets its share again) or could not
        load a version (it keeps serving what it had) is shown, not hidden."""
        for url, answer in answers.items():
            if "error" in answer:
                report["errors"].append(f"{kind} on {url}: {answer['error']}")
            for alias, error in (answer.get("errors") or {}).items():
                report["errors"].append(f"{kind} on {url}: {alias}: {error}")

    def _keep_predecessor(self, predecessor: str, champion: str, report: dict[str, Any]) -> None:
        """The old champion as challenger; if the registry refuses, the promotion still stands
        (the watch is then unpaired) and the next tick follows whatever the alias holds."""
        from models import registry

        why = f"previous champion, shadows {champion} for the rollback watch"
        try:
            registry.promote(self.settings, predecessor, registry.CHALLENGER, why, by=ACTOR)
        except Exception as error:
            log.exception("could not make %s the challenger", predecessor)
            report["errors"].append(f"challenger {predecessor}: {type(error).__name__}: {error}")

    def _restore(self, before: GuardState, set_percent: float | None, now: pd.Timestamp) -> None:
        self.state = before
        if set_percent is not None:
            self.state.percent = set_percent
            if before.phase == CANARY and set_percent == 0:  # a failed promotion: start over from shadow
                self.state.phase, self.state.since = SHADOW, _iso(now)

    def _count_action(self, action: str) -> None:
        if self.metrics is not None:
            self.metrics.monitor_actions.labels(action).inc()
