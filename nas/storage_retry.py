"""Optuna's storage riding out a database restart: every storage call retried on transient
faults (`db.retry`), with the writes whose first try may have committed unseen made safe to
run again."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Container, Sequence
from datetime import datetime
from typing import Any, TypeVar

import optuna
from optuna.distributions import BaseDistribution
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import URL, make_url

from db.engine import describe_error, display_url
from db.retry import DEFAULT_BUDGET_S, is_transient, retry_call, transient_cause

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Optuna's own prefix for studies created without a name (`no-name-<uuid4>`).
NO_NAME_PREFIX = "no-name-"


class _Attempts:
    """Calls `fn` and remembers whether any try so far failed transiently: only then can a
    later try meet the effect of an earlier one whose commit landed but whose answer was lost."""

    def __init__(self) -> None:
        self.faulted = False

    def __call__(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except Exception as exc:
            self.faulted = self.faulted or is_transient(exc)
            raise


class RetryingStorage(optuna.storages.BaseStorage):
    """`inner`, with every call retried while its database is transiently away (a restart, a
    dropped connection, a locked SQLite file), for up to `budget_s` seconds per call; then
    `db.retry.DatabaseUnavailable`. Other errors pass through unchanged.

    Each call of Optuna's RDBStorage is one transaction, so a retry repeats a whole one. Reads,
    attribute and parameter writes, and intermediate values are safe to repeat (upserts, or an
    insert whose duplicate Optuna ignores). The others are made so here, on the assumption of
    DESIGN.md that one process owns the study (does every ask and tell):

    - `set_trial_state_values`: the repeat finds the trial already in the wanted state (finished:
      `UpdateFinishedTrialError`; RUNNING: False) — done by our lost commit, so True.
    - `create_new_trial`: the repeat would add a second trial, and the first would stay
      RUNNING (or, from a template, WAITING: trained twice) for ever. After a fault the repeat
      looks first for the trial the lost commit made and returns it.
    - `create_new_study`: an unnamed study gets its `no-name-<uuid>` name before the first try,
      so that a repeat meeting `DuplicatedStudyError` can return the study it made.
    - `delete_study`: a repeat meeting KeyError (no such study) is done.

    Wrap the storage Optuna would use (`optuna.storages.get_storage(rdb)`, which keeps its
    trial cache): Optuna adds that cache only to a bare RDBStorage, never to this wrapper.
    """

    def __init__(
        self,
        inner: optuna.storages.BaseStorage,
        url: URL | str | None,
        *,
        budget_s: float = DEFAULT_BUDGET_S,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.url = url
        self._parsed = make_url(url) if isinstance(url, str) else url  # scrubs its password
        self.budget_s = budget_s
        self._sleep = sleep
        self._clock = clock

    def __repr__(self) -> str:
        where = "" if self.url is None else f", {display_url(self.url)!r}"
        return f"RetryingStorage({type(self.inner).__name__}{where})"

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        return retry_call(fn, budget_s=self.budget_s, what=f"running Optuna's {what}",
                          url=self.url, sleep=self._sleep, clock=self._clock,
                          on_retry=self._log_retry)

    def _log_retry(self, attempt: int, exc: BaseException, wait_s: float) -> None:
        shown = "the database" if self.url is None else display_url(self.url)
        logger.warning("%s is not answering Optuna (%s); retry %d in %.1f s", shown,
                       describe_error(transient_cause(exc) or exc, self._parsed), attempt, wait_s)

    # -- studies -------------------------------------------------------------------------
    def create_new_study(
        self, directions: Sequence[StudyDirection], study_name: str | None = None
    ) -> int:
        name = study_name if study_name is not None else NO_NAME_PREFIX + str(uuid.uuid4())
        attempts = _Attempts()

        def attempt() -> int:
            try:
                return attempts(lambda: self.inner.create_new_study(directions, study_name=name))
            except DuplicatedStudyError:
                if not attempts.faulted:
                    raise
                return self.inner.get_study_id_from_name(name)  # made by our lost commit

        return self._retry("create_new_study", attempt)

    def delete_study(self, study_id: int) -> None:
        attempts = _Attempts()

        def attempt() -> None:
            try:
                attempts(lambda: self.inner.delete_study(study_id))
            except KeyError:
                if not attempts.faulted:
                    raise  # gone already before we came: deleted by our lost commit

        self._retry("delete_study", attempt)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._retry("set_study_user_attr",
                    lambda: self.inner.set_study_user_attr(study_id, key, value))

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._retry("set_study_system_attr",
                    lambda: self.inner.set_study_system_attr(study_id, key, value))

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._retry("get_study_id_from_name",
                           lambda: self.inner.get_study_id_from_name(study_name))

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._retry("get_study_name_from_id",
                           lambda: self.inner.get_study_name_from_id(study_id))

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._retry("get_study_directions",
                           lambda: self.inner.get_study_directions(study_id))

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._retry("get_study_user_attrs",
                           lambda: self.inner.get_study_user_attrs(study_id))

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._retry("get_study_system_attrs",
                           lambda: self.inner.get_study_system_attrs(study_id))

    def get_all_studies(self) -> list[Any]:  # Optuna's FrozenStudy has no public name
        return self._retry("get_all_studies", self.inner.get_all_studies)

    # -- trials --------------------------------------------------------------------------
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        # Optuna stamps a trial's start, completion with this clock (ours: it runs here), to
        # the microsecond on SQLite and PostgreSQL: a trial stamped since is no older one.
        since = datetime.now()
        # From a template (enqueue, add_trial; rare), the trials there before are counted, so
        # that a lost commit's trial can be told from an identical older one.
        before = None if template_trial is None else self.get_n_trials(study_id)
        attempts = _Attempts()

        def attempt() -> int:
            if attempts.faulted:
                made = self._lost_new_trial(study_id, template_trial, since, before)
                if made is not None:
                    return made
            return attempts(lambda: self.inner.create_new_trial(study_id, template_trial))

        return self._retry("create_new_trial", attempt)

    def _lost_new_trial(
        self, study_id: int, template: FrozenTrial | None, since: datetime, before: int | None
    ) -> int | None:
        """The id of the trial an earlier try of `create_new_trial` made, if it committed:
        from no template, a RUNNING trial started since our first try with nothing set yet
        (under one owner, nobody else makes those); from a template, a trial numbered after
        those counted before our first try that equals the template."""
        for trial in self.inner.get_all_trials(study_id, deepcopy=False):
            if template is None:
                mine = (trial.state == TrialState.RUNNING and trial.datetime_start is not None
                        and trial.datetime_start >= since and _blank(trial))
            else:
                mine = (before is not None and trial.number >= before
                        and _same_content(trial, template))
            if mine:
                logger.info("trial %d of study %d was created before the database dropped; "
                            "using it", trial.number, study_id)
                return self.inner.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        return None

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
    ) -> None:
        self._retry("set_trial_param", lambda: self.inner.set_trial_param(
            trial_id, param_name, param_value_internal, distribution))

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._retry(
            "get_trial_id_from_study_id_trial_number",
            lambda: self.inner.get_trial_id_from_study_id_trial_number(study_id, trial_number),
        )

    def get_trial_number_from_id(self, trial_id: int) -> int:
        return self._retry("get_trial_number_from_id",
                           lambda: self.inner.get_trial_number_from_id(trial_id))

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        return self._retry("get_trial_param",
                           lambda: self.inner.get_trial_param(trial_id, param_name))

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        since = datetime.now()  # as in create_new_trial
        attempts = _Attempts()

        def attempt() -> bool:
            try:
                done = attempts(
                    lambda: self.inner.set_trial_state_values(trial_id, state=state, values=values)
                )
            except UpdateFinishedTrialError:
                if attempts.faulted and self._set_by_us(trial_id, state, since):
                    return True
                raise  # finished by someone else, or before this call: the caller must know
            if not done and attempts.faulted and self._set_by_us(trial_id, state, since):
                return True  # WAITING -> RUNNING committed by our lost try
            return done

        return self._retry("set_trial_state_values", attempt)

    def _set_by_us(self, trial_id: int, state: TrialState, since: datetime) -> bool:
        """Whether trial `trial_id` reached `state` since our first try (its start time for
        RUNNING, its completion time for a finished state)."""
        trial = self.inner.get_trial(trial_id)
        if trial.state != state:
            return False
        stamp = trial.datetime_complete if state.is_finished() else trial.datetime_start
        return stamp is not None and stamp >= since

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        self._retry("set_trial_intermediate_value", lambda: self.inner.set_trial_intermediate_value(
            trial_id, step, intermediate_value))

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._retry("set_trial_user_attr",
                    lambda: self.inner.set_trial_user_attr(trial_id, key, value))

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._retry("set_trial_system_attr",
                    lambda: self.inner.set_trial_system_attr(trial_id, key, value))

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._retry("get_trial", lambda: self.inner.get_trial(trial_id))

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        return self._retry("get_all_trials", lambda: self.inner.get_all_trials(
            study_id, deepcopy=deepcopy, states=states))

    def get_n_trials(
        self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None
    ) -> int:
        return self._retry("get_n_trials", lambda: self.inner.get_n_trials(study_id, state))

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._retry("get_best_trial", lambda: self.inner.get_best_trial(study_id))

    def get_trial_params(self, trial_id: int) -> dict[str, Any]:
        return self._retry("get_trial_params", lambda: self.inner.get_trial_params(trial_id))

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._retry("get_trial_user_attrs",
                           lambda: self.inner.get_trial_user_attrs(trial_id))

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._retry("get_trial_system_attrs",
                           lambda: self.inner.get_trial_system_attrs(trial_id))

    def remove_session(self) -> None:
        self.inner.remove_session()  # releases connections; nothing to retry

    def check_trial_is_updatable(self, trial_id: int, trial_state: TrialState) -> None:
        self._retry("check_trial_is_updatable",
                    lambda: self.inner.check_trial_is_updatable(trial_id, trial_state))


def _blank(trial: FrozenTrial) -> bool:
    """Nothing set on the trial since it was created."""
    return not (trial.params or trial.user_attrs or trial.system_attrs
                or trial.intermediate_values or trial.values)


def _same_content(trial: FrozenTrial, template: FrozenTrial) -> bool:
    """What `create_new_trial` copies from a template (all but number, id and start)."""
    return (trial.state == template.state and trial.params == template.params
            and trial.distributions == template.distributions
            and trial.user_attrs == template.user_attrs
            and trial.system_attrs == template.system_attrs
            and trial.intermediate_values == template.intermediate_values
            and trial.values == template.values)


def wrap_storage(
    storage: optuna.storages.BaseStorage, url: URL | str | None, budget_s: float = DEFAULT_BUDGET_S
) -> RetryingStorage:
    """`storage` as Optuna would use it (an RDBStorage gets Optuna's trial cache, through the
    public `optuna.storages.get_storage`), with every call retried for up to `budget_s`
    seconds while the database at `url` is transiently away."""
    return RetryingStorage(optuna.storages.get_storage(storage), url, budget_s=budget_s)
