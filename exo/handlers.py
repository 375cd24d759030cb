"""The answer objects of the original device-client: one handler class per kind of call.

A call's outcome is a :class:`Requests_Response` (``code``, ``body``); the handler built from
it says what it means (``success``, ``online``, ``authorized``, ...). Code 0 means there was
no answer at all (network down, timeout), as in the original. Class names are the original's.
"""
from __future__ import annotations

from typing import List, Optional


class Http_ActivationCodes:
    Timeout = 0
    OK = 200
    DeviceNotin1P = 403
    NotFound = 404
    NotEnabled = 409


class Http_ReadWriteCodes:
    Timeout = 0
    OK = 200
    NoContent = 204
    NotModified = 304
    Unauthorized = 401
    Conflict = 409
    ClientErrors = [400] + list(range(402, 500))
    ServerErrors = list(range(500, 600))


class Requests_Response:
    """What a call got: ``code`` (0 = no answer) and ``body`` (also as ``status_code``, ``text``)."""

    def __init__(self, code: int, body: str = "") -> None:
        self.code = self.status_code = code
        self.body = self.text = body

    def __repr__(self) -> str:
        return "code: %r, body: %r" % (self.code, self.body)


class _Handler:
    """``code``, ``body``, ``success``, ``online`` (False: no answer), ``authorized`` (False: 401)."""

    SUCCESS = (Http_ReadWriteCodes.OK, Http_ReadWriteCodes.NoContent)

    def __init__(self, response: Requests_Response) -> None:
        self.response = response
        self.code = response.code
        self.body = response.body
        self.success = self.code in self.SUCCESS
        self.online = self.code != Http_ReadWriteCodes.Timeout
        self.authorized = self.code != Http_ReadWriteCodes.Unauthorized
        if not self.authorized:
            self.body = "No or invalid CIK."
        elif self.code in Http_ReadWriteCodes.ServerErrors:
            self.body = "Response code: {%d} :: There was an error with the request on the server." % self.code

    def __repr__(self) -> str:
        return "Response code: %r, Response body: %r, success: %r" % (self.code, self.body, self.success)


class WriteHandler(_Handler):
    """A write: success on 200 or 204 (Murano answers 204 with an empty body)."""

    def __init__(self, response: Requests_Response) -> None:
        super().__init__(response)
        if self.code in Http_ReadWriteCodes.ClientErrors:
            self.body = ("Response code: {%d} :: There was an error* with the request by the client. "
                         "Error Message: %s" % (self.code, response.body))


class ReadHandler(_Handler):
    """A read or long poll: ``body`` is ``alias=value&...`` with the values decoded (url-unquoted,
    as the original gave it); 304 (long poll timed out) is "Not modified".

    Beyond the original: ``values`` (a dict, which survives values holding ``&`` or ``=``) and, for
    long polls, ``last_modified`` (pass it back as ``modify_ts``).
    """

    def __init__(self, response: Requests_Response, values: Optional[dict] = None,
                 last_modified: Optional[str] = None) -> None:
        super().__init__(response)
        self.values = dict(values or {})
        self.last_modified = last_modified
        if self.code == Http_ReadWriteCodes.NotModified:
            self.body = "Not modified"
        elif self.code in Http_ReadWriteCodes.ClientErrors:
            self.body = "There was an error* with the request by the client."


class ReadWriteHandler(ReadHandler):
    """A write and read in one request; as :class:`ReadHandler`."""


class RecordHandler(_Handler):
    """A record: success on 200 or 204; a 409 sets ``conflict`` (timestamps that already hold values)."""

    def __init__(self, response: Requests_Response) -> None:
        super().__init__(response)
        self.conflict = self.code == Http_ReadWriteCodes.Conflict
        if not self.conflict and self.code in Http_ReadWriteCodes.ClientErrors:
            self.body = "Response code: {%d} :: There was an error* with the request by the client." % self.code

    def get_conflict_timestamps(self) -> List[float]:
        """The timestamps a 409 named (its body is ``alias=ts1,ts2&...``)."""
        from device_client.errors import parse_conflicts

        return [float(ts) for stamps in parse_conflicts(self.response.body).values() for ts in stamps]

    def __repr__(self) -> str:
        return ("Response code: %r, Response body: %r, success: %r, conflict: %r"
                % (self.code, self.body, self.success, self.conflict))


class ActivationHandler:
    """An activation: ``activated`` when the answer is 200 with a 40-character CIK in ``body``."""

    MESSAGES = {
        Http_ActivationCodes.NotFound: "Client described by <vendor>, <model>, <sn> is not found on the system.",
        Http_ActivationCodes.DeviceNotin1P: "Received 403 from activation attempt. Device Not in Murano",
        Http_ActivationCodes.NotEnabled: "Received 409 from activation attempt. Device Not Enabled "
                                         "(already activated: its CIK was handed out before)",
        Http_ActivationCodes.Timeout: "Request timed out",
    }

    def __init__(self, response: Requests_Response) -> None:
        self.response = response
        self.code = response.code
        self.body = response.body
        self.activated = self.code == Http_ActivationCodes.OK and len(self.body) == 40
        if self.code != Http_ActivationCodes.OK:
            self.body = self.MESSAGES.get(self.code, "Response code: {%d} :: Something went wrong." % self.code)

    def __repr__(self) -> str:
        return "Response code: %r, Response body: %r, Activation success: %r" % (self.code, self.body, self.activated)
