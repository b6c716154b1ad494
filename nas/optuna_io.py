"""Fewer transactions per trial on Optuna's RDB storage.

Optuna commits once per `suggest_*` call and once per attribute; for a candidate of the
`resnet-cifar` space that is a dozen commits before it is even trained, and a commit is what
costs on SQLite (fsync) and PostgreSQL (a round trip and a WAL flush). bench/controller.py
measured the driver spending more on these commits than on everything else it does.

`BatchingStorage` is Optuna's own `_CachedStorage` (what `create_study` wraps an
`RDBStorage` in) plus two things. Inside `with storage.batch(trial) as batch:` the
parameters the sampler suggests for that trial are held back, and at the end of the block
they are written together with the attributes collected on `batch` (user, system, and the
study system attributes that carry the optuna-dashboard note) in ONE transaction. And
`attrs_at_tell(trial, attrs)` puts user attributes into the transaction of the trial's tell.

It also keeps a copy of each trial it created (or took from the queue) while that trial
runs, updated by every write it makes to it, and answers `get_trial` for those from the
copy. Optuna reads a running trial from the database three times between ask and tell
(`Trial()`, and twice in `tell`), six statements each; bench/controller.py measured those
reads as the largest cost per trial left on PostgreSQL. The copy is exact because the
driver is the only writer of the trials it runs: `Search` refuses a study another live
driver is searching, and other processes close a running trial only after its driver is
gone. A trial leaves the copy when it finishes.

And every `ask` first looks for an enqueued (WAITING) trial to take, which reads the study's
new and running trials from the database (seven statements). Those trials are made by this
process (`--enqueue`, retries), which `create_new_trial` sees, or by another one
(`enqueue_trial` from a script): the look-up goes to the database after a WAITING trial was
created here, and otherwise at most once every `WAITING_POLL_S`.
Every other call is `_CachedStorage` unchanged.

The writes use Optuna's own models and checks (the trial must still be updatable; a
parameter's distribution must be compatible with the study's). Where those internals are
missing (another Optuna), everything falls back to the public calls, one commit each.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna import distributions
from optuna.storages._cached_storage import _CachedStorage

WAITING = optuna.trial.TrialState.WAITING

try:  # what `Study.optimize` tells with: `Study.tell` minus the re-read of the told trial
    from optuna.study._tell import _tell_with_warning
except ImportError:  # pragma: no cover - another Optuna: the public tell
    _tell_with_warning = None

try:  # Optuna's RDB internals: present in the versions pyproject allows (>= 5.0)
    import sqlalchemy as sa
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
except ImportError:  # pragma: no cover - an Optuna without them gets the public calls
    models = None


@dataclass
class TrialBatch:
    """What one new trial writes (held-back parameters, attributes), for one transaction."""

    trial: optuna.trial.Trial
    user_attrs: dict[str, Any] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)
    # Study attributes that belong to this trial alone (its dashboard note: the keys name
    # the trial's id), so a trial created here has none of them yet.
    study_system_attrs: dict[str, Any] = field(default_factory=dict)
    params: list[tuple[str, float, distributions.BaseDistribution, Any]] = field(
        default_factory=list
    )


# How long an enqueued trial made by another process may wait before `ask` takes it.
WAITING_POLL_S = 1.0


class BatchingStorage(_CachedStorage):
    """`_CachedStorage` that can write a new trial's params and attributes in one commit."""

    def __init__(self, backend: optuna.storages.RDBStorage) -> None:
        super().__init__(backend)
        self._batches: dict[int, TrialBatch] = {}
        self._at_tell: dict[int, dict[str, Any]] = {}
        self._own: dict[int, optuna.trial.FrozenTrial] = {}  # running trials created here
        self._none_waiting: dict[int, float] = {}  # study id -> when the DB last had none

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Any = None
    ) -> list[optuna.trial.FrozenTrial]:
        if states is not None and tuple(states) == (WAITING,):  # `ask` looking for a queue
            checked = self._none_waiting.get(study_id)
            if checked is not None and time.monotonic() - checked < WAITING_POLL_S:
                return []
            trials = super().get_all_trials(study_id, deepcopy, states)
            if not trials:
                self._none_waiting[study_id] = time.monotonic()
            return trials
        return super().get_all_trials(study_id, deepcopy, states)

    def create_new_trial(
        self, study_id: int, template_trial: optuna.trial.FrozenTrial | None = None
    ) -> int:
        trial_id = super().create_new_trial(study_id, template_trial)
        if template_trial is not None and template_trial.state == WAITING:
            self._none_waiting.pop(study_id, None)
        with self._lock:
            study_id, number = self._trial_id_to_study_id_and_number[trial_id]
            created = self._studies[study_id].trials[number]
            # Only a trial that starts running here is ours; an enqueued (WAITING) one may be
            # taken by any process, and is ours once this one takes it (`_adopt`).
            if created.state == optuna.trial.TrialState.RUNNING:
                self._own[trial_id] = copy.deepcopy(created)
        return trial_id

    def get_trial(self, trial_id: int) -> optuna.trial.FrozenTrial:
        with self._lock:
            own = self._own.get(trial_id)
            if own is not None:
                return copy.deepcopy(own)  # callers (Trial) change what they get
        return super().get_trial(trial_id)

    def _adopt(self, trial_id: int) -> None:
        """This process took `trial_id` from the queue (WAITING -> RUNNING, which succeeds
        for one process only): it runs it now, and is its only writer, as for a trial it
        created. One read makes the copy; `Trial()` reads it next, from the copy."""
        trial = super().get_trial(trial_id)
        with self._lock:
            self._own[trial_id] = trial

    def _own_trial(self, trial_id: int) -> optuna.trial.FrozenTrial | None:
        """The copy of a trial running here (call with the lock held)."""
        return self._own.get(trial_id)

    @contextlib.contextmanager
    def batch(self, trial: optuna.trial.Trial) -> Iterator[TrialBatch]:
        """Hold back `trial`'s parameters; write them with the collected attributes at the end.

        The write happens also when the block raises (an invalid spec still leaves its
        parameters on the failed trial), and then the exception goes on.
        """
        batch = TrialBatch(trial)
        with self._lock:
            self._batches[trial._trial_id] = batch
        try:
            yield batch
        finally:
            with self._lock:
                self._batches.pop(trial._trial_id, None)
            write_trial(self, batch)

    def attrs_at_tell(self, trial: optuna.trial.Trial, user: dict[str, Any]) -> None:
        """Write these user attributes in the transaction that finishes `trial` (its tell)."""
        with self._lock:
            self._at_tell.setdefault(trial._trial_id, {}).update(user)
        trial._cached_frozen_trial.user_attrs.update(user)

    def set_trial_state_values(
        self, trial_id: int, state: optuna.trial.TrialState, values: Any = None
    ) -> bool:
        with self._lock:
            attrs = self._at_tell.pop(trial_id, None)
            own = self._own_trial(trial_id)
            known = None if own is None else set(own.user_attrs)
            # Whatever happens below, the copy is done: the trial changes state, or the
            # database says it can't (finished elsewhere); from now on the database answers.
            self._own.pop(trial_id, None)
        if not attrs:
            changed = super().set_trial_state_values(trial_id, state, values)
            if changed and state == optuna.trial.TrialState.RUNNING:
                self._adopt(trial_id)
            return changed
        if models is None:  # pragma: no cover - public calls, one commit each
            for key, value in attrs.items():
                self.set_trial_user_attr(trial_id, key, value)
            return super().set_trial_state_values(trial_id, state, values)
        # Optuna's sessions are scoped (one per thread): the inner `set_trial_state_values`
        # joins this session, so its commit carries the attributes too. A finished trial
        # gets no attributes (Optuna's refusal reads the trial in a session of its own,
        # whose commit would otherwise carry them); the row lock keeps that check true
        # until the commit.
        with _create_scoped_session(self._backend.scoped_session) as session:
            row = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
            if not row.state.is_finished():
                _replace_attrs(session, models.TrialUserAttributeModel, "trial_id", trial_id,
                               attrs, known)
            return super().set_trial_state_values(trial_id, state, values)

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: distributions.BaseDistribution,
    ) -> None:
        batch = self._batches.get(trial_id)
        if batch is None or models is None:
            super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
            with self._lock:
                if (own := self._own_trial(trial_id)) is not None:
                    _add_param(own, param_name, param_value_internal, distribution)
            return
        with self._lock:  # the bookkeeping `_CachedStorage.set_trial_param` does, minus the write
            study_id, _ = self._trial_id_to_study_id_and_number[trial_id]
            known = self._studies[study_id].param_distribution
            previous = known.get(param_name)
            if previous is not None:
                distributions.check_distribution_compatibility(previous, distribution)
            else:
                known[param_name] = distribution
        batch.params.append((param_name, param_value_internal, distribution, previous))

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        super().set_trial_user_attr(trial_id, key, value)
        with self._lock:
            if (own := self._own_trial(trial_id)) is not None:
                own.user_attrs[key] = copy.deepcopy(value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        super().set_trial_system_attr(trial_id, key, value)
        with self._lock:
            if (own := self._own_trial(trial_id)) is not None:
                own.system_attrs[key] = copy.deepcopy(value)

    def set_trial_intermediate_value(self, trial_id: int, step: int, value: float) -> None:
        super().set_trial_intermediate_value(trial_id, step, value)
        with self._lock:
            if (own := self._own_trial(trial_id)) is not None:
                own.intermediate_values[step] = value

    def _keys_of(self, trial_id: int) -> tuple[set[str], set[str]] | None:
        """The user and system attribute keys a trial created here has in the database."""
        with self._lock:
            own = self._own_trial(trial_id)
            return None if own is None else (set(own.user_attrs), set(own.system_attrs))

    def _written(self, batch: TrialBatch) -> None:
        """`batch` is in the database: bring the trial's copy up to it."""
        with self._lock:
            own = self._own_trial(batch.trial._trial_id)
            if own is None:
                return
            for name, value, dist, _ in batch.params:
                _add_param(own, name, value, dist)
            own.user_attrs.update(copy.deepcopy(batch.user_attrs))
            own.system_attrs.update(copy.deepcopy(batch.system_attrs))


def _add_param(
    trial: optuna.trial.FrozenTrial, name: str, value: float,
    dist: distributions.BaseDistribution,
) -> None:
    trial.params[name] = dist.to_external_repr(value)
    trial.distributions[name] = dist


def fix_params(trial: optuna.trial.Trial, batch: TrialBatch, params: dict[str, Any]) -> bool:
    """Give `trial` (just asked, nothing suggested yet) the parameters `params`, as
    `Study.enqueue_trial(params)` and then `ask` would: its suggest calls return them, and
    it carries them in the system attribute `fixed_params` that the queue writes (here,
    in the batch's transaction). False, changing nothing, for a trial `ask` took from
    Optuna's queue: it has parameters of its own.

    The queue's way costs a WAITING trial's inserts, a read of the study's waiting trials,
    the WAITING -> RUNNING update and a read of the trial; bench.overhead, where every
    trial is enqueued, measured that as the largest part of the driver's CPU per trial.
    """
    if trial._fixed_params:  # what `Trial.__init__` read from the trial's `fixed_params`
        return False
    trial._fixed_params = dict(params)
    batch.system_attrs["fixed_params"] = dict(params)
    return True


def tell(
    study: optuna.Study, trial: optuna.trial.Trial, values: Any = None,
    state: optuna.trial.TrialState | None = None,
) -> None:
    """`study.tell(trial, values, state=state)` without reading the finished trial back.

    `Study.tell` returns the finished trial, read again from the database (six statements
    on RDB storage); nothing here uses it. `Study.optimize` tells the same way.
    """
    if _tell_with_warning is None:  # pragma: no cover - another Optuna
        study.tell(trial, values, state=state)
        return
    _tell_with_warning(study=study, trial=trial, value_or_values=values, state=state)


def write_trial(storage: Any, batch: TrialBatch) -> None:
    """Write `batch` (params, attributes, study attributes) in one transaction."""
    trial = batch.trial
    if not (batch.params or batch.user_attrs or batch.system_attrs or batch.study_system_attrs):
        return
    backend = getattr(storage, "_backend", None)
    if models is None or not isinstance(backend, optuna.storages.RDBStorage):
        _write_public(storage, batch)
    else:
        _write_rdb(backend, batch, storage._keys_of(trial._trial_id)
                   if isinstance(storage, BatchingStorage) else None)
    if isinstance(storage, BatchingStorage):
        storage._written(batch)
    trial._cached_frozen_trial.user_attrs.update(batch.user_attrs)
    trial._cached_frozen_trial.system_attrs.update(batch.system_attrs)


def _write_public(storage: Any, batch: TrialBatch) -> None:
    trial_id = batch.trial._trial_id
    for name, value, dist, _ in batch.params:
        storage.set_trial_param(trial_id, name, value, dist)
    for key, value in batch.user_attrs.items():
        storage.set_trial_user_attr(trial_id, key, value)
    for key, value in batch.system_attrs.items():
        storage.set_trial_system_attr(trial_id, key, value)
    for key, value in batch.study_system_attrs.items():
        storage.set_study_system_attr(batch.trial.study._study_id, key, value)


def _write_rdb(
    backend: optuna.storages.RDBStorage, batch: TrialBatch,
    keys: tuple[set[str], set[str]] | None = None,
) -> None:
    """`keys`: the user and system attribute keys the trial has in the database, known for
    a trial running here (only those need deleting before the insert); None otherwise,
    and then the trial's row is read to check it may still change."""
    trial_id = batch.trial._trial_id
    study_id = batch.trial.study._study_id
    with _create_scoped_session(backend.scoped_session, True) as session:
        if keys is None:  # not a trial running here: the database says whether it may change
            row = models.TrialModel.find_or_raise_by_id(trial_id, session)
            backend.check_trial_is_updatable(trial_id, row.state)
        # A trial running here is running in the database too (this driver is its only
        # writer, as for the copy `get_trial` answers from): no read of its row.
        params = []
        for name, value, dist, previous in batch.params:
            if previous is None:  # first time this process sees the name: ask the study
                backend._set_trial_param_without_commit(session, trial_id, name, value, dist)
                continue
            params.append(
                {"trial_id": trial_id, "param_name": name, "param_value": value,
                 "distribution_json": distributions.distribution_to_json(dist)}
            )
        if params:
            session.execute(sa.insert(models.TrialParamModel), params)
        user_keys, system_keys = keys or (None, None)
        _replace_attrs(session, models.TrialUserAttributeModel, "trial_id", trial_id,
                       batch.user_attrs, user_keys)
        _replace_attrs(session, models.TrialSystemAttributeModel, "trial_id", trial_id,
                       batch.system_attrs, system_keys)
        _replace_attrs(session, models.StudySystemAttributeModel, "study_id", study_id,
                       batch.study_system_attrs, set() if keys is not None else None)


def _replace_attrs(
    session: Any, model: Any, owner: str, owner_id: int, attrs: dict,
    existing: set[str] | None = None,
) -> None:
    """Set `attrs` on one trial/study: delete the keys, insert them again (the upsert every
    backend spells alike), two statements whatever the number of keys. With `existing` (the
    keys known to be there), only those are deleted, and no DELETE runs when none are."""
    if not attrs:
        return
    column = getattr(model, owner)
    stale = list(attrs) if existing is None else [k for k in attrs if k in existing]
    if stale:
        session.execute(sa.delete(model).where(column == owner_id, model.key.in_(stale)))
    session.execute(
        sa.insert(model),
        [{owner: owner_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()],
    )


# optuna-dashboard keeps a trial's note in study system attributes: a version and the body in
# chunks of at most 2,045 characters (its `_note.note_ver_key`, `note_str_key_prefix` and
# `SYSTEM_ATTR_MAX_LENGTH`). tests/nas/test_optuna_io.py reads ours back with its `get_note`.
NOTE_CHUNK = 2045


def dashboard_note(trial: optuna.trial.Trial, body: str) -> dict[str, Any]:
    """The study system attributes that make `body` the trial's optuna-dashboard note.

    What `optuna_dashboard.save_note` writes for a trial's first note (version 1), without
    its two reads of every study system attribute (they grow with the study, which made the
    cost per trial grow with the search), and without importing optuna_dashboard: its package
    loads Optuna's importance module, scikit-learn and SciPy, 2.4 s before a search's first
    trial could start on this project's 2-core machine.
    """
    tid = trial._trial_id
    chunks = range(0, len(body), NOTE_CHUNK)
    return {f"dashboard:{tid}:note_ver": 1,
            **{f"dashboard:{tid}:note_str:{i}": body[at:at + NOTE_CHUNK]
               for i, at in enumerate(chunks)}}
