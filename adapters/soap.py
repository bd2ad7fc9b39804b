"""The SOAP adapter: zeep (WSDL-driven) over httpx, every failure classified by what it means for a write.

Classification — the question is always "could the HIS have applied this call?":

- nothing was sent: connection refused or reset while connecting, DNS failure, connect timeout, no free
  pooled connection in time, HTTP 503/429/408 (the server refused before processing) →
  :class:`~adapters.base.RetryableError`;
- the request went out and no usable answer came back: read or write timeout, connection dropped before the
  reply (``RemoteProtocolError``, ``ReadError``, ``WriteError``), the overall deadline passing, HTTP 5xx
  without a SOAP fault → :class:`~adapters.base.InDoubtError`;
- a SOAP fault → :class:`~adapters.base.PermanentError` (``soap_fault``), unless the operation's
  ``response.fault_in_doubt = true`` says this HIS raises faults after partial work → in doubt;
- HTTP 4xx without a fault (wrong path, authentication) → permanent: the server refused to process it;
- the success rule is false → permanent with the HIS code and message, or retryable when the code is in
  ``retryable_codes`` (the HIS says it is busy and did nothing);
- a request the profile or the WSDL cannot build → :class:`~adapters.mapping.MappingError` (permanent,
  nothing was sent);
- a reply that cannot be read (not XML, no result element, a field that will not convert) → permanent for a
  read, :class:`~adapters.mapping.ReplyMappingError` (in doubt) for a write, because the HIS answered and may
  have applied it.

One caveat of HTTP keep-alive: a request written onto a pooled connection that the server had just closed
fails with ``RemoteProtocolError`` although the HIS never saw it. It is still reported as in doubt (the
bridge then asks ``trade.check``); being wrong in that direction costs a query, never a duplicate.

At most ``max_connections`` calls are inside httpx at once: the rest wait on the adapter's own semaphore (up to
``connect_timeout_s``, then retryable: nothing was sent). httpx's pool never queues a request, because httpcore
1.0.9 leaks a pool slot for good when a queued request is cancelled (encode/httpcore#1093): under the 20,000-order
simulated day the pool filled with connections stuck "connecting" and every write failed with ``PoolTimeout``
against a healthy HIS. Should a slot leak anyway, a ``PoolTimeout`` (which cannot happen otherwise) replaces the
client; the old one is closed once every call that may still use it has ended.

The WSDL is loaded once at :meth:`SoapAdapter.start` in a worker thread (zeep's loader is synchronous). When
it comes from a URL and ``wsdl_cache`` is set, the fetched copy is kept on disk and used when the HIS cannot
serve it, so a restart or a dry run does not depend on the HIS answering ``?wsdl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import zeep
import zeep.exceptions
from lxml import etree
from zeep.proxy import AsyncServiceProxy
from zeep.transports import AsyncTransport
from zeep.wsdl import Document
from zeep.wsdl.bindings.soap import Soap11Binding, SoapBinding

from adapters.base import Adapter, InDoubtError, PermanentError, RetryableError, WirePreview
from adapters.mapping.binding import OperationBinding
from adapters.mapping.errors import MappingError
from adapters.profile import ProfileError

if TYPE_CHECKING:
    from adapters.profile import Profile, SoapSettings

log = logging.getLogger(__name__)

_SOAP_ENVELOPES = ("http://schemas.xmlsoap.org/soap/envelope/", "http://www.w3.org/2003/05/soap-envelope")
_RETRY_STATUSES = frozenset({408, 429, 503})


def endpoint_key(url: str) -> str:
    """``scheme://host:port`` of a URL: what the circuit breaker and the metrics are keyed on."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.hostname}:{port}"


class _HttpStatus(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


def _has_fault(body: bytes) -> bool:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False)
    try:
        root = etree.fromstring(body, parser)
    except (etree.XMLSyntaxError, ValueError):
        return False
    return any(root.find(f"{{{ns}}}Body/{{{ns}}}Fault") is not None for ns in _SOAP_ENVELOPES)


def _as_zeep(transport: _Transport) -> Any:
    """zeep annotates ``Document``'s transport as a class, but it takes (and needs) an instance."""
    return transport


class _Transport(AsyncTransport):
    """zeep's async transport, but a non-200 reply without a SOAP fault is surfaced with its status.

    zeep turns any non-200 XML body into a ``Fault`` ("Unknown fault occured"), which would hide a 503 (the
    server refused, safe to retry) or a bare 500 (in doubt) behind a permanent-looking fault.
    """

    async def post_xml(self, address: str, envelope: Any, headers: Any) -> Any:
        response = await super().post_xml(address, envelope, headers)
        if response.status_code != 200 and (
            response.status_code in _RETRY_STATUSES or not _has_fault(response.content)
        ):
            raise _HttpStatus(response.status_code, response.content[:2000])
        return response


class _NoFreeConnection(Exception):
    def __init__(self, size: int, waited_s: float) -> None:
        super().__init__(f"all {size} connections to the HIS stayed busy for {waited_s:g} s; nothing was sent")


class SoapAdapter(Adapter):
    """One SOAP HIS endpoint driven by one profile."""

    protocol = "soap"

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.settings: SoapSettings = profile.soap
        known = self.settings.endpoint or self.settings.wsdl
        super().__init__(endpoint_key(known) if _is_url(known) else f"soap:{profile.name}")
        self.address: str | None = self.settings.endpoint
        self._client: zeep.AsyncClient | None = None
        self._service: AsyncServiceProxy | None = None
        self._binding: SoapBinding | None = None
        self._transport: _Transport | None = None
        self._lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(self.settings.max_connections)
        self._retiring: set[asyncio.Task[None]] = set()

    def operations(self) -> frozenset[str]:
        return self.profile.operations

    def addresses(self) -> str:
        return f"WSDL {self.settings.wsdl}, service {self.address or '(the WSDL soap:address)'}"

    def wsdl_operations(self) -> list[str]:
        """Every operation the loaded WSDL's binding offers, for ``check`` and ``doctor``."""
        if self._binding is None:
            raise RuntimeError("the WSDL is not loaded; call start() first")
        return sorted(self._binding.all())

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        async with self._lock:
            if self._service is not None:
                return
            transport = self._make_transport()
            try:
                document = await asyncio.to_thread(self._load_wsdl, transport)
                zsettings = _zeep_settings()
                client = zeep.AsyncClient(document, transport=transport, settings=zsettings)
                binding, address = self._pick_binding(document)
                self._check_operations(binding)
            except BaseException:
                await _close_transport(transport)
                raise
            self.address = self.settings.endpoint or address
            if not self.address:
                await _close_transport(transport)
                raise self._profile_error("soap.endpoint: the WSDL gives no address; set one")
            self.endpoint = endpoint_key(self.address)
            self._transport = transport
            self._client = client
            self._binding = binding
            self._service = AsyncServiceProxy(client, binding, address=self.address)

    async def close(self) -> None:
        async with self._lock:
            transport, self._transport = self._transport, None
            self._client = self._service = self._binding = None
            for task in list(self._retiring):
                task.cancel()
            for task in list(self._retiring):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if transport is not None:
                await _close_transport(transport)

    def _http_settings(self) -> tuple[httpx.Timeout, ssl.SSLContext | bool, httpx.BasicAuth | None]:
        s = self.settings
        timeout = httpx.Timeout(s.operation_timeout_s, connect=s.connect_timeout_s, pool=s.connect_timeout_s)
        verify: ssl.SSLContext | bool = s.verify_tls
        if s.ca_file:
            verify = ssl.create_default_context(cafile=s.ca_file)
        auth = httpx.BasicAuth(s.username, s.password) if s.username and s.password is not None else None
        return timeout, verify, auth

    def _make_client(self) -> httpx.AsyncClient:
        timeout, verify, auth = self._http_settings()
        n = self.settings.max_connections
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        client = httpx.AsyncClient(timeout=timeout, verify=verify, auth=auth, limits=limits)
        client.headers = {"User-Agent": f"Zeep/{zeep.__version__} (www.python-zeep.org)"}  # as zeep's transport sets it
        return client

    def _make_transport(self) -> _Transport:
        timeout, verify, auth = self._http_settings()
        return _Transport(
            client=self._make_client(),
            wsdl_client=httpx.Client(timeout=timeout, verify=verify, auth=auth),
            operation_timeout=self.settings.operation_timeout_s,
        )

    @contextlib.asynccontextmanager
    async def _connection_slot(self) -> AsyncIterator[None]:
        """One of ``max_connections`` places inside httpx, waited for here, where a cancellation is harmless."""
        try:
            async with asyncio.timeout(self.settings.connect_timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            raise _NoFreeConnection(self.settings.max_connections, self.settings.connect_timeout_s) from None
        try:
            yield
        finally:
            self._slots.release()

    def _renew_client(self) -> None:
        """The pool said it was full while fewer calls than its size were in it: slots leaked. Calls from now on
        get a fresh client; the old one is closed after the longest a call still on it can take."""
        transport = self._transport
        if transport is None:
            return
        old, transport.client = transport.client, self._make_client()
        log.warning("SOAP connection pool to %s leaked its slots; replaced with a fresh one", self.address)
        linger = self.settings.connect_timeout_s + 2 * self.settings.operation_timeout_s

        async def retire() -> None:
            try:
                await asyncio.sleep(linger)
            finally:
                await old.aclose()

        task = asyncio.get_running_loop().create_task(retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _load_wsdl(self, transport: _Transport) -> Document:
        location = self.settings.wsdl
        if not _is_url(location):
            return Document(location, _as_zeep(transport), settings=_zeep_settings())
        cache = Path(self.settings.wsdl_cache) if self.settings.wsdl_cache else None
        try:
            content = transport.load(location)
        except (httpx.HTTPError, zeep.exceptions.TransportError, OSError) as exc:
            if cache is None or not cache.is_file():
                raise RetryableError("wsdl_unavailable", f"cannot load the WSDL {location}: {exc}") from None
            log.warning("WSDL %s unavailable (%s); using the cached copy %s", location, exc, cache)
            content = cache.read_bytes()
        else:
            if cache is not None:
                _write_atomically(cache, content)
        return Document(io.BytesIO(content), _as_zeep(transport), base=location, settings=_zeep_settings())

    def _pick_binding(self, document: Document) -> tuple[SoapBinding, str | None]:
        wanted = self.settings.binding
        if wanted:
            for qname, binding in document.bindings.items():
                if wanted in (qname, etree.QName(qname).localname):
                    return binding, _address_of(document, binding)
            names = ", ".join(etree.QName(q).localname for q in document.bindings)
            raise self._profile_error(f"soap.binding: no binding {wanted!r} (the WSDL has {names})")
        ports = [port for service in document.services.values() for port in service.ports.values()]
        for port in sorted(ports, key=lambda p: not isinstance(p.binding, Soap11Binding)):
            if isinstance(port.binding, SoapBinding):
                return port.binding, port.binding_options.get("address")
        soap = [b for b in document.bindings.values() if isinstance(b, SoapBinding)]
        if not soap:
            raise self._profile_error("soap.wsdl: the WSDL has no SOAP binding")
        soap.sort(key=lambda b: not isinstance(b, Soap11Binding))
        return soap[0], None

    def _check_operations(self, binding: SoapBinding) -> None:
        problems = []
        available = set(binding.all())
        for name, op in sorted(self.profile.bindings.items()):
            if op.call not in available:
                problems.append(f'operations."{name}".call: the WSDL has no operation {op.call!r}')
                continue
            params = _parameter_names(binding, op.call)
            for param in op.request.templates:
                if params is not None and param not in params:
                    problems.append(
                        f'operations."{name}".request.{param}: {op.call} has no parameter {param!r} '
                        f"(it takes {', '.join(params) or 'none'})"
                    )
        if problems:
            raise self._profile_error(*problems)

    def _profile_error(self, *problems: str) -> ProfileError:
        return ProfileError(self.profile.path.name, list(problems))

    # --- calls ---------------------------------------------------------------------------------------------

    def _bound(self, operation: str) -> OperationBinding:
        binding = self.profile.bindings.get(operation)
        if binding is None:
            message = f"profile {self.profile.name!r} does not bind {operation}"
            raise PermanentError("unknown_operation", message)
        return binding

    async def _prepare(self, operation: str, params: dict[str, Any]) -> tuple[OperationBinding, Any, dict]:
        binding = self._bound(operation)
        await self.start()
        args = binding.render(params)
        assert self._client is not None and self._service is not None
        try:
            envelope = self._client.create_message(self._service, binding.call, **args)
        except Exception as exc:  # zeep's own errors, TypeError, ValueError, ...: nothing was sent, so permanent
            message = f"{operation}: the WSDL refuses the request for {binding.call}: {exc}"
            raise MappingError(message) from None
        return binding, envelope, args

    async def preview(self, operation: str, params: dict[str, Any]) -> WirePreview:
        binding, envelope, args = await self._prepare(operation, params)
        assert self._binding is not None
        action = getattr(self._binding.get(binding.call), "soapaction", None)
        return WirePreview(
            protocol=self.protocol,
            target=self.address or "",
            payload=etree.tostring(envelope, pretty_print=True, encoding="unicode"),
            details={
                "call": binding.call,
                "soap_action": action,
                "content_type": "text/xml; charset=utf-8",
                "parameters": args,
            },
        )

    async def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        result, _ = await self.call_raw(operation, params)
        return result

    async def call_raw(self, operation: str, params: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """The raw reply is the result string: the document the profile's XPaths read."""
        binding, _, args = await self._prepare(operation, params)
        spec = self.profile.spec.operations[operation].response
        assert self._service is not None
        deadline = self.settings.connect_timeout_s + self.settings.operation_timeout_s + 1
        try:
            async with asyncio.timeout(deadline), self._connection_slot():
                result = await self._service[binding.call](**args)
        except Exception as exc:
            if isinstance(exc, httpx.PoolTimeout):
                self._renew_client()
            raise self._classify(binding, spec.fault_in_doubt, exc) from exc
        text = _result_text(binding, spec.result, result)
        return binding.reply(text), text

    def _classify(self, binding: OperationBinding, fault_in_doubt: bool, exc: Exception) -> Exception:
        where = f"{binding.operation} ({binding.call} at {self.address})"
        if isinstance(exc, _NoFreeConnection):
            return RetryableError("connect_timeout", f"{where}: {exc}")
        if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
            return RetryableError("connect_timeout", f"{where}: {type(exc).__name__}")
        if isinstance(exc, httpx.ConnectError):
            return RetryableError("connect_failed", f"{where}: {exc}")
        if isinstance(exc, httpx.TimeoutException | TimeoutError):
            return InDoubtError("timeout", f"{where}: no reply in time after the request was sent")
        if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
            return InDoubtError("connection_lost", f"{where}: connection lost before the reply: {exc}")
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
            return PermanentError("bad_endpoint", f"{where}: {exc}")
        if isinstance(exc, httpx.HTTPError):
            return InDoubtError("transport_error", f"{where}: {type(exc).__name__}: {exc}")
        if isinstance(exc, _HttpStatus):
            body = exc.body.decode("utf-8", "replace")
            code = f"http_{exc.status}"
            if exc.status in _RETRY_STATUSES:
                return RetryableError(code, f"{where}: the server refused the call", raw=body)
            if 400 <= exc.status < 500:
                return PermanentError(code, f"{where}: the server rejected the request", raw=body)
            return InDoubtError(code, f"{where}: HTTP {exc.status} without a SOAP fault", raw=body)
        if isinstance(exc, zeep.exceptions.Fault):
            message = f"{where}: SOAP fault {exc.code}: {exc.message}"
            if fault_in_doubt:
                return InDoubtError("soap_fault", message)
            return PermanentError("soap_fault", message)
        return binding.unmappable(f"the SOAP reply cannot be read: {type(exc).__name__}: {exc}")


# --- helpers -----------------------------------------------------------------------------------------------


def _is_url(value: str | None) -> bool:
    return bool(value) and urlsplit(value or "").scheme in ("http", "https")


def _zeep_settings() -> zeep.Settings:
    return zeep.Settings(strict=True, xml_huge_tree=False, forbid_dtd=True, forbid_entities=True)


async def _close_transport(transport: _Transport) -> None:
    with contextlib.suppress(Exception):
        transport.wsdl_client.close()
    await transport.aclose()


def _write_atomically(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _address_of(document: Document, binding: Any) -> str | None:
    for service in document.services.values():
        for port in service.ports.values():
            if port.binding is binding:
                return port.binding_options.get("address")
    return None


def _parameter_names(binding: SoapBinding, call: str) -> list[str] | None:
    try:
        body = binding.get(call).input.body
        return [name for name, _ in body.type.elements]
    except AttributeError:
        return None


def _result_text(binding: OperationBinding, result_name: str | None, result: Any) -> str:
    value = result
    if result_name is not None and not isinstance(result, str | bytes) and result is not None:
        try:
            value = result[result_name]
        except (KeyError, TypeError, AttributeError, IndexError):
            raise binding.unmappable(f"the SOAP reply has no {result_name!r}") from None
    if value is None:
        raise binding.unmappable(f"the SOAP reply's {result_name or 'result'} is empty")
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if not isinstance(value, str):
        raise binding.unmappable(
            f"the SOAP reply's {result_name or 'result'} is a {type(value).__name__}, not XML text"
        )
    return value
