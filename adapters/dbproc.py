"""The stored-procedure adapter: pyodbc in a bounded thread pool, one transaction per catalog operation.

Every operation runs on ONE pooled connection inside one transaction: its call, or its whole sequence of calls
(open → add lines → submit), then the reply rule, then ``COMMIT``. Anything that goes wrong before the commit
is sent rolls the transaction back, so a sequence interrupted halfway leaves no half-posted charge. Calls for
the same session key (``trade_no`` by default) run one at a time. Parameters are always bound (``?``), never
formatted into SQL; procedure names are checked against :data:`SQL_NAME` when the profile loads. Every result
set is drained (``nextset()``), and pyodbc is imported only when a connection is opened, so installations
without stored-procedure profiles never need libodbc.

Call syntax by dialect (``routine`` defaults to ``function`` on PostgreSQL, ``procedure`` elsewhere)::

    dialect      procedure                                  function
    postgresql   CALL p(?, ?[, NULL per OUT])               SELECT * FROM p(?, ?)
    mariadb      CALL p(?, ?[, @out…]); SELECT @out AS out  SELECT p(?, ?) AS result
    mssql        {CALL p(?, ?)}  (with OUT: DECLARE @out …;  SELECT * FROM p(?, ?)
                 EXEC p ?, ?, @out OUTPUT; SELECT @out)

OUT values become a last result set and are also readable as ``out.NAME``. With ``refcursors = true``
(PostgreSQL functions returning ``SETOF refcursor``) every cursor returned is fetched as a result set.

Failures, classified by whether the HIS could have applied the call (SQLSTATE from the driver; MariaDB's
native error number where its SQLSTATE says nothing)::

    when                 SQLSTATE                                              kind
    opening a connection any (08001 refused, 08004, HYT00 login timeout, 28000) retryable: nothing was sent
    executing            40001 serialization/deadlock, 40P01, 40xxx; 1205/1213 retryable: the server rolled back
    executing            08S01 link failure, 08003, 08006, 08007, 57P01-57P03    in doubt: sent, outcome unknown
                         (backend terminated), HYT00/HYT01/HY008 timeout or
                         cancel, 57014, MariaDB 2006/2013 (connection lost)
    executing            0A, 21, 22 data, 23 constraint, 26, 28, 2B, 2D, 2F, 34, permanent: refused as sent
                         38, 39, 3B, 3D, 3F, 42 syntax/missing procedure, 44,
                         45000 (SIGNAL), P0001 (RAISE)
    executing            anything else (HY000 …)                               in doubt
    committing           40xxx                                                 retryable (rolled back)
    committing           anything else                                         in doubt

The ``in doubt`` rows are conservative: the bridge rolls back, but a procedure may ``COMMIT`` on its own, so
the bridge asks ``trade.check`` before resending. A status result set saying ``'F'`` is the HIS refusing
(permanent, or retryable for ``retryable_codes``); a reply that cannot be mapped is permanent for a read and
in doubt for a write. A connection that failed or timed out is closed, never reused.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import itertools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from adapters.base import Adapter, AdapterError, InDoubtError, PermanentError, RetryableError, WirePreview
from adapters.mapping.binding import OperationBinding
from adapters.mapping.errors import MappingError
from adapters.mapping.rows import ResultSet, RowExtractor, RowsReply, cell_text
from adapters.profile import ProfileError

if TYPE_CHECKING:
    from adapters.profile import CallOptions, OperationSpec, Profile

log = logging.getLogger(__name__)

SQL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}(\.[A-Za-z_][A-Za-z0-9_]{0,127}){0,2}")
"""A procedure name, optionally qualified (``schema.proc``, ``db.schema.proc``): never quoted, never spliced."""
_OUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_DEFAULT_PORTS = {"postgresql": 5432, "mariadb": 3306, "mssql": 1433}
_SECRET_KEYS = frozenset({"pwd", "password"})
_SESSION_TIMEOUTS = {
    "postgresql": "SET statement_timeout = {ms}",
    "mariadb": "SET SESSION max_statement_time = {s}",
}
"""The server's own statement timeout, set when connecting: not every driver honours the ODBC query timeout
(psqlODBC refuses it), and a cancel from the watchdog thread is the last resort."""


class DbprocSettings(BaseModel):
    """The ``[dbproc]`` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connection: str = Field(min_length=1)
    """ODBC connection string (``Driver={…};Server=…;Port=…;Database=…;Uid=…;Pwd=…``), usually from
    ``${env:…}`` so that the password stays out of the profile."""
    dialect: Literal["postgresql", "mariadb", "mssql"]
    """Decides the call syntax (see the module docstring) and driver quirks (MariaDB gets UTF-8 text)."""
    pool_size: int = Field(4, ge=1, le=100)
    """Connections kept open, and calls in flight at once."""
    thread_pool_size: int | None = Field(None, ge=1, le=100)
    """Worker threads for the blocking driver calls; defaults to ``pool_size``."""
    query_timeout_s: float = Field(10.0, gt=0, le=600)
    """Per statement; past it the statement is cancelled and the call is in doubt."""
    login_timeout_s: float = Field(5.0, gt=0, le=120)
    idle_check_s: float = Field(30.0, ge=0, le=3600)
    """A pooled connection idle this long is pinged (``SELECT 1``) before use, so that a connection the
    server dropped while idle fails before anything is sent rather than making a call in doubt."""


def check_operation(op: OperationSpec) -> list[str]:
    """Profile-load rules for one ``[dbproc]`` operation: SQL names and the step keys."""
    problems = []
    calls: list[tuple[str, CallOptions, str]] = []
    if op.call is not None:
        calls.append(("call", op, op.call))
    calls.extend((f"steps[{i}].call", step, step.call) for i, step in enumerate(op.steps))
    for where, options, name in calls:
        prefix = where.rsplit(".", 1)[0] + "." if "." in where else ""
        if not SQL_NAME.fullmatch(name):
            problems.append(f"{where}: {name!r} is not a procedure name (letters, digits, _; schema.name allowed)")
        for out in options.out:
            if not _OUT_NAME.fullmatch(out):
                problems.append(f"{prefix}out: {out!r} is not a parameter name")
    for i, step in enumerate(op.steps):
        if step.repeat_over is not None and not _OUT_NAME.fullmatch(step.repeat_over):
            problems.append(f"steps[{i}].repeat_over: {step.repeat_over!r} is not an input field name")
    return problems


# --- statements --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    """One call as sent: SQL text with ``?`` markers, and a follow-up query reading OUT values."""

    sql: str
    out_sql: str | None = None


def build_statement(dialect: str, name: str, n_params: int, options: CallOptions) -> Statement:
    routine = options.routine or ("function" if dialect == "postgresql" else "procedure")
    marks = ", ".join("?" for _ in range(n_params))
    outs = list(options.out)
    if routine == "function":
        if dialect == "mariadb":
            return Statement(f"SELECT {name}({marks}) AS result")
        return Statement(f"SELECT * FROM {name}({marks})")
    if dialect == "postgresql":
        args = ", ".join([*(["?"] * n_params), *(["NULL"] * len(outs))])
        return Statement(f"CALL {name}({args})")
    if dialect == "mariadb":
        args = ", ".join([*(["?"] * n_params), *(f"@{o}" for o in outs)])
        out_sql = "SELECT " + ", ".join(f"@{o} AS {o}" for o in outs) if outs else None
        return Statement(f"CALL {name}({args})", out_sql)
    if not outs:
        return Statement(f"{{CALL {name}({marks})}}")
    declare = " ".join(f"DECLARE @{o} NVARCHAR(MAX);" for o in outs)
    args = ", ".join([*(["?"] * n_params), *(f"@{o} OUTPUT" for o in outs)])
    select = ", ".join(f"@{o} AS {o}" for o in outs)
    return Statement(f"SET NOCOUNT ON; {declare} EXEC {name} {args}; SELECT {select};")


_INT = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")


def bind_value(text: str, kind: str, tz: Any) -> Any:
    """Rendered template text → the Python value pyodbc binds with the right SQL type; empty text is NULL."""
    if text == "":
        return None
    if kind == "str":
        return text
    if kind == "int" and _INT.fullmatch(text.strip()):
        return int(text)
    if kind == "decimal" and _DECIMAL.fullmatch(text.strip()):
        with contextlib.suppress(InvalidOperation):
            return Decimal(text.strip())
    if kind == "date":
        with contextlib.suppress(ValueError):
            return dt.date.fromisoformat(text.strip()[:10])
    if kind == "datetime":
        with contextlib.suppress(ValueError, OverflowError):
            moment = dt.datetime.fromisoformat(text.strip())
            return moment.astimezone(tz).replace(tzinfo=None) if moment.tzinfo is not None else moment
    raise MappingError(f"{text!r} is not a valid {kind} parameter")


# --- the plan of one operation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CallPlan:
    name: str
    request: Any
    """The step's :class:`~adapters.mapping.templates.RequestTemplate`: parameter order is template order."""
    options: Any
    statement: Statement
    rule: Any = None
    repeat_over: str | None = None


@dataclass(frozen=True)
class OperationPlan:
    binding: OperationBinding
    calls: tuple[CallPlan, ...]
    xml_column: Any = None
    """For ``response.format = "xml"``: the compiled path of the column (or OUT value) holding the XML."""
    session_key: str = "trade_no"


class _Saved(dict[str, Any]):
    """Values saved by earlier steps; in a preview they are not known yet and show as placeholders."""

    def __init__(self, placeholders: bool = False) -> None:
        super().__init__()
        self.placeholders = placeholders

    def __missing__(self, key: str) -> Any:
        if self.placeholders:
            return f"<saved.{key}>"
        raise KeyError(key)


# --- connections -------------------------------------------------------------------------------------------


class _Watchdog:
    """One thread per adapter that runs the cancel of every statement still running at its deadline.

    A ``threading.Timer`` per statement started a thread on every call; on a small VM that start and its
    handshake cost about 0.4 ms, most of a 0.5 ms call. Every statement is armed with the same delay, so the
    deadlines come in arming order and the earliest is always the oldest entry; a disarmed entry is removed.
    """

    def __init__(self) -> None:
        self._entries: collections.OrderedDict[int, tuple[float, Callable[[], None]]] = collections.OrderedDict()
        self._cond = threading.Condition()
        self._keys = itertools.count()
        self._thread: threading.Thread | None = None
        """The thread serving the entries; a thread that is no longer this one stops."""

    def arm(self, delay_s: float, action: Callable[[], None]) -> int:
        """Run ``action`` in ``delay_s`` seconds unless disarmed first (an exception it raises is logged)."""
        with self._cond:
            key = next(self._keys)
            was_empty = not self._entries
            self._entries[key] = (time.monotonic() + delay_s, action)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dbproc-watchdog", daemon=True)
                self._thread.start()
            elif was_empty:
                self._cond.notify()
            return key

    def disarm(self, key: int) -> None:
        with self._cond:
            self._entries.pop(key, None)

    def close(self) -> None:
        """Stop the thread; anything still armed is dropped (its statement's connection is being closed)."""
        with self._cond:
            self._thread = None
            self._entries.clear()
            self._cond.notify_all()

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                while True:
                    if self._thread is not me:
                        return
                    if not self._entries:
                        self._cond.wait()
                        continue
                    key, (deadline, action) = next(iter(self._entries.items()))
                    left = deadline - time.monotonic()
                    if left <= 0:
                        del self._entries[key]
                        break
                    self._cond.wait(left)
            try:
                action()
            except Exception:
                log.exception("dbproc watchdog: a statement's cancel failed")


@dataclass
class _Pooled:
    connection: Any
    last_used: float = field(default_factory=time.monotonic)


class _Failure(Exception):
    """A driver error with the phase it happened in, classified by :func:`classify`."""

    def __init__(self, phase: str, error: BaseException, timed_out: bool = False) -> None:
        super().__init__(str(error))
        self.phase = phase
        self.error = error
        self.timed_out = timed_out


_RETRY_NATIVE = frozenset({1205, 1213})
_LOST_NATIVE = frozenset({2006, 2013, 1927})
_PERMANENT_CLASSES = frozenset(
    {"0A", "21", "22", "23", "26", "28", "2B", "2D", "2F", "34", "38", "39", "3B", "3D", "3F", "42", "44", "P0"}
)
_IN_DOUBT_STATES = frozenset({"08S01", "08003", "08006", "08007", "HYT00", "HYT01", "HY008", "57014"})
_NATIVE = re.compile(r"\((\d{4})\)")


def sqlstate_of(error: BaseException) -> tuple[str, int | None, str]:
    """``(SQLSTATE, native error number or None, message)`` of a pyodbc error."""
    args: tuple[Any, ...] = getattr(error, "args", ())
    state = str(args[0]) if len(args) >= 2 and isinstance(args[0], str) else ""
    message = str(args[1]) if len(args) >= 2 else str(error)
    native = _NATIVE.search(message)
    return state.upper(), int(native.group(1)) if native else None, message


def classify(failure: _Failure, where: str) -> AdapterError:
    """The table in the module docstring."""
    state, native, message = sqlstate_of(failure.error)
    text = f"{where}: [{state or '?'}] {message}".strip()
    code = f"sqlstate_{state}" if state else "odbc_error"
    if failure.phase == "connect":
        return RetryableError("connect_failed", f"{where}: cannot connect: [{state or '?'}] {message}")
    if state.startswith("40") or native in _RETRY_NATIVE:
        return RetryableError(code, f"{text} (rolled back by the server)")
    if failure.timed_out:
        return InDoubtError("query_timeout", f"{where}: no answer within the query timeout; cancelled")
    if failure.phase == "commit":
        return InDoubtError(code, f"{text} (while committing)")
    if state in ("08001", "08004"):
        return RetryableError(code, text)
    if state in _IN_DOUBT_STATES or state.startswith("57P") or native in _LOST_NATIVE:
        return InDoubtError(code, text)
    if state[:2] in _PERMANENT_CLASSES or state == "45000":
        return PermanentError(code, text)
    return InDoubtError(code, text)


# --- the adapter -------------------------------------------------------------------------------------------


class DbprocAdapter(Adapter):
    """One HIS database reached over ODBC, driven by one profile."""

    protocol = "dbproc"

    def __init__(self, profile: Profile) -> None:
        settings = profile.settings
        if not isinstance(settings, DbprocSettings):
            raise ProfileError(profile.path.name, ["dbproc: the [dbproc] section did not validate"])
        self.profile = profile
        self.settings = settings
        super().__init__(odbc_endpoint(settings.connection, settings.dialect))
        problems: list[str] = []
        self.plans = {name: self._plan(name, binding, problems) for name, binding in profile.bindings.items()}
        if problems:
            raise ProfileError(profile.path.name, problems)
        self._idle: list[_Pooled] = []
        self._idle_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None
        self._keys: dict[str, tuple[asyncio.Lock, int]] = {}
        self._watchdog = _Watchdog()

    def operations(self) -> frozenset[str]:
        return self.profile.operations

    def _plan(self, name: str, binding: OperationBinding, problems: list[str]) -> OperationPlan:
        spec = self.profile.spec.operations[name]
        where = f"operations.{_quoted(name)}"
        dialect = self.settings.dialect
        calls = []
        sources: list[tuple[str, Any, Any, Any, str | None]] = []
        if binding.steps:
            for step, step_spec in zip(binding.steps, spec.steps, strict=True):
                sources.append((step.call, step.request, step_spec, step.rule, step.repeat_over))
        else:
            sources.append((binding.call, binding.request, spec, None, None))
        for index, (call, request, options, rule, repeat_over) in enumerate(sources):
            at = f"{where}.steps[{index}]" if binding.steps else where
            routine = options.routine or ("function" if dialect == "postgresql" else "procedure")
            if options.out and routine == "function":
                problems.append(f"{at}.out: OUT values need routine = 'procedure' (a function returns columns)")
            if options.refcursors and dialect != "postgresql":
                problems.append(f"{at}.refcursors: only PostgreSQL returns result sets as refcursors")
            unknown = set(options.types) - set(request.templates)
            if unknown:
                problems.append(f"{at}.types: no parameter {', '.join(sorted(unknown))} in request")
            statement = build_statement(dialect, call, len(request.templates), options)
            calls.append(CallPlan(call, request, options, statement, rule, repeat_over))
        xml_column = None
        if spec.response.format == "xml":
            if not spec.response.result:
                problems.append(f"{where}.response.result: format 'xml' needs the column holding the XML")
            else:
                try:
                    xml_column = RowExtractor().compile_path(spec.response.result)
                except ValueError as exc:
                    problems.append(f"{where}.response.result: {exc}")
        elif spec.response.format not in (None, "rows"):
            problems.append(f"{where}.response.format: stored procedures answer rows (or XML in a column)")
        return OperationPlan(binding, tuple(calls), xml_column, spec.session_key or "trade_no")

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._executor is None:
            workers = self.settings.thread_pool_size or self.settings.pool_size
            self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dbproc")
            self._slots = asyncio.Semaphore(self.settings.pool_size)

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for pooled in idle:
            _close_quietly(pooled.connection)
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown)
        self._watchdog.close()

    # --- calls ---------------------------------------------------------------------------------------------

    def _bound(self, operation: str) -> OperationPlan:
        plan = self.plans.get(operation)
        if plan is None:
            raise PermanentError("unknown_operation", f"profile {self.profile.name!r} does not bind {operation}")
        return plan

    async def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        result, _ = await self._call(operation, params)
        return result

    async def call_raw(self, operation: str, params: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        result, reply = await self._call(operation, params)
        return result, reply.text()

    async def _call(self, operation: str, params: dict[str, Any]) -> tuple[dict[str, Any], RowsReply]:
        """The result and the reply it was read from, which only ``call_raw`` turns into JSON text."""
        plan = self._bound(operation)
        await self.start()
        assert self._executor is not None and self._slots is not None
        key = params.get(plan.session_key)
        async with self._serialized(str(key) if key is not None else None), self._slots:
            future = asyncio.get_running_loop().run_in_executor(self._executor, self._run, plan, params)
            return await future

    @contextlib.asynccontextmanager
    async def _serialized(self, key: str | None) -> Any:
        if key is None:
            yield
            return
        lock, users = self._keys.get(key, (asyncio.Lock(), 0))
        self._keys[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._keys[key]
            if users <= 1:
                del self._keys[key]
            else:
                self._keys[key] = (lock, users - 1)

    async def preview(self, operation: str, params: dict[str, Any]) -> WirePreview:
        plan = self._bound(operation)
        statements: list[dict[str, Any]] = []
        for call, context in self._expand(plan, params, _Saved(placeholders=True)):
            rendered = call.request.render(context)
            statements.append(
                {
                    "call": call.name,
                    "sql": call.statement.sql,
                    "out_sql": call.statement.out_sql,
                    "parameters": [
                        {"name": name, "type": call.options.types.get(name, "str"), "value": value}
                        for name, value in rendered.items()
                    ],
                }
            )
        lines = []
        for statement in statements:
            lines.append(statement["sql"] + (f"\n{statement['out_sql']}" if statement["out_sql"] else ""))
            for index, parameter in enumerate(statement["parameters"], 1):
                lines.append(f"  -- ?{index} {parameter['name']} ({parameter['type']}) = {parameter['value']!r}")
        return WirePreview(
            protocol=self.protocol,
            target=self.endpoint,
            payload="\n".join(lines),
            details={
                "dialect": self.settings.dialect,
                "connection": redact(self.settings.connection),
                "transaction": "one transaction for the whole operation, committed after the reply is read",
                "statements": statements,
            },
        )

    def _expand(self, plan: OperationPlan, params: Mapping[str, Any], saved: _Saved) -> Iterator[tuple[CallPlan, dict]]:
        for call in plan.calls:
            items: Sequence[Any] = [None]
            if call.repeat_over is not None:
                value = params.get(call.repeat_over)
                if not isinstance(value, list | tuple) or not value:
                    message = f"{plan.binding.operation}: repeat_over {call.repeat_over!r} needs a non-empty list"
                    raise MappingError(message)
                items = value
            for item in items:
                yield call, {**params, "saved": saved, "item": item}

    # --- in a worker thread --------------------------------------------------------------------------------

    def _run(self, plan: OperationPlan, params: dict[str, Any]) -> tuple[dict[str, Any], RowsReply]:
        binding = plan.binding
        where = f"{binding.operation} ({binding.call} at {self.endpoint})"
        try:
            pooled = self._acquire()
        except _Failure as failure:
            raise classify(failure, where) from failure.error
        healthy = False
        try:
            saved = _Saved()
            reply = RowsReply([])
            for call, context in self._expand(plan, params, saved):
                args = [
                    bind_value(text, call.options.types.get(name, "str"), self.profile.filters.tz)
                    for name, text in call.request.render(context).items()
                ]
                reply = self._execute(pooled.connection, call, args)
                if call.rule is not None:
                    saved.update(self._apply(binding, call.rule, reply))
            result = self._map(plan, reply)
            try:
                pooled.connection.commit()
            except Exception as exc:
                raise _Failure("commit", exc) from exc
            healthy = True
            return result, reply
        except _Failure as failure:
            self._rollback(pooled)
            raise classify(failure, where) from failure.error
        except AdapterError:
            healthy = self._rollback(pooled)
            raise
        except BaseException:
            self._rollback(pooled)
            raise
        finally:
            self._release(pooled, healthy)

    def _apply(self, binding: OperationBinding, rule: Any, reply: RowsReply) -> dict[str, Any]:
        record = RowExtractor().parse(reply)
        try:
            return rule.apply(record, self.profile.filters)
        except MappingError as exc:
            raise binding.unmappable(exc.message, raw=reply.text()) from None
        except AdapterError as exc:  # the HIS refused: the reply as JSON goes with the error, made only now
            if exc.raw is None:
                exc.raw = reply.text()
            raise

    def _map(self, plan: OperationPlan, reply: RowsReply) -> dict[str, Any]:
        binding = plan.binding
        if plan.xml_column is None:
            return self._apply(binding, binding.reply_rule, reply)
        try:
            text = RowExtractor().parse(reply).value(plan.xml_column)
        except MappingError as exc:
            raise binding.unmappable(exc.message, raw=reply.text()) from None
        if text is None:
            raise binding.unmappable(f"the reply has no XML in {plan.xml_column.source!r}", raw=reply.text())
        return binding.reply(text)

    def _execute(self, connection: Any, call: CallPlan, args: list[Any]) -> RowsReply:
        cursor = connection.cursor()
        cancelled = threading.Event()

        def cancel() -> None:
            cancelled.set()
            with contextlib.suppress(Exception):
                cursor.cancel()

        watchdog = self._watchdog.arm(self.settings.query_timeout_s + 1.0, cancel)
        try:
            cursor.execute(call.statement.sql, args) if args else cursor.execute(call.statement.sql)
            sets = _drain(cursor)
            if call.options.refcursors:
                sets = self._fetch_cursors(cursor, sets)
            out: dict[str, str | None] = {}
            if call.statement.out_sql is not None:
                cursor.execute(call.statement.out_sql)
                out_sets = _drain(cursor)
                sets.extend(out_sets)
            elif call.options.out and sets:
                out_sets = sets[-1:]
            else:
                out_sets = []
            if call.options.out and out_sets and out_sets[-1].rows:
                last = out_sets[-1]
                out = {column: last.rows[0][i] for i, column in enumerate(last.columns)}
            return RowsReply(sets, out)
        except Exception as exc:
            import pyodbc

            if isinstance(exc, pyodbc.Error):
                raise _Failure("execute", exc, timed_out=cancelled.is_set() or _is_timeout(exc)) from exc
            raise
        finally:
            self._watchdog.disarm(watchdog)
            with contextlib.suppress(Exception):
                cursor.close()

    @staticmethod
    def _fetch_cursors(cursor: Any, sets: list[ResultSet]) -> list[ResultSet]:
        fetched: list[ResultSet] = []
        for result in sets:
            for row in result.rows:
                name = row[0] if row else None
                if name is None:
                    continue
                cursor.execute('FETCH ALL FROM "' + name.replace('"', '""') + '"')
                fetched.extend(_drain(cursor))
        return fetched

    def _connect(self) -> Any:
        import pyodbc

        s = self.settings
        try:
            connection = pyodbc.connect(s.connection, autocommit=False, timeout=max(1, round(s.login_timeout_s)))
        except pyodbc.Error as exc:
            raise _Failure("connect", exc) from exc
        if s.dialect == "mariadb":
            connection.setdecoding(pyodbc.SQL_CHAR, encoding="utf-8")
            connection.setdecoding(pyodbc.SQL_WCHAR, encoding="utf-8")
            connection.setencoding(encoding="utf-8")
        with contextlib.suppress(pyodbc.Error):
            connection.timeout = max(1, round(s.query_timeout_s))
        session = _SESSION_TIMEOUTS.get(s.dialect)
        if session is not None:
            try:
                connection.execute(session.format(ms=round(s.query_timeout_s * 1000), s=s.query_timeout_s))
                connection.commit()
            except pyodbc.Error as exc:
                _close_quietly(connection)
                raise _Failure("connect", exc) from exc
        return connection

    def _acquire(self) -> _Pooled:
        while True:
            with self._idle_lock:
                pooled = self._idle.pop() if self._idle else None
            if pooled is None:
                return _Pooled(self._connect())
            if time.monotonic() - pooled.last_used < self.settings.idle_check_s:
                return pooled
            try:
                cursor = pooled.connection.cursor()
                cursor.execute("SELECT 1").fetchall()
                cursor.close()
                pooled.connection.rollback()
                return pooled
            except Exception:
                _close_quietly(pooled.connection)

    def _release(self, pooled: _Pooled, healthy: bool) -> None:
        if not healthy or self._executor is None:
            _close_quietly(pooled.connection)
            return
        pooled.last_used = time.monotonic()
        with self._idle_lock:
            if len(self._idle) < self.settings.pool_size:
                self._idle.append(pooled)
                return
        _close_quietly(pooled.connection)

    @staticmethod
    def _rollback(pooled: _Pooled) -> bool:
        try:
            pooled.connection.rollback()
            return True
        except Exception:
            return False


def _drain(cursor: Any) -> list[ResultSet]:
    """Every result set of the statement, in order; update counts and empty results are skipped."""
    sets = []
    while True:
        if cursor.description is not None:
            columns = tuple(str(d[0]).lower() for d in cursor.description)
            rows = [tuple(cell_text(v) for v in row) for row in cursor.fetchall()]
            sets.append(ResultSet(columns, rows))
        if not cursor.nextset():
            return sets


def _is_timeout(error: BaseException) -> bool:
    state, _, _ = sqlstate_of(error)
    return state in ("HYT00", "HYT01", "HY008", "57014")


def _close_quietly(connection: Any) -> None:
    with contextlib.suppress(Exception):
        connection.close()


def _quoted(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'


# --- connection strings ------------------------------------------------------------------------------------


def parse_connection(connection: str) -> dict[str, str]:
    """ODBC ``key=value;`` pairs (keys lower-cased); values may be braced (``{…;…}``)."""
    pairs: dict[str, str] = {}
    for match in re.finditer(r"\s*([^=;]+?)\s*=\s*(\{(?:[^}]|\}\})*\}|[^;]*)\s*(?:;|$)", connection):
        value = match.group(2)
        if value.startswith("{") and value.endswith("}"):
            value = value[1:-1].replace("}}", "}")
        pairs[match.group(1).lower()] = value
    return pairs


def odbc_endpoint(connection: str, dialect: str) -> str:
    """``odbc://host:port/database`` (or ``odbc://dsn/NAME``), never with credentials: the breaker's key."""
    pairs = parse_connection(connection)
    host = pairs.get("server") or pairs.get("host") or pairs.get("servername") or pairs.get("address") or ""
    port = pairs.get("port")
    host = host.removeprefix("tcp:")
    if "," in host:
        host, port = host.split(",", 1)
    database = pairs.get("database") or pairs.get("db") or pairs.get("initial catalog") or ""
    if not host and pairs.get("dsn"):
        return f"odbc://dsn/{pairs['dsn']}"
    if not host and pairs.get("socket"):
        return f"odbc://localhost/{database}"
    return f"odbc://{host or 'localhost'}:{port or _DEFAULT_PORTS.get(dialect, 0)}/{database}"


def redact(connection: str) -> str:
    """The connection string with passwords replaced, for previews and logs."""
    parts = []
    for key, value in parse_connection(connection).items():
        parts.append(f"{key}={'***' if key in _SECRET_KEYS else value}")
    return ";".join(parts)
