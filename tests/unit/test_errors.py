"""services/errors.py: every ServiceError, and an error forwarded from the replica that owns a run (RemoteError),
has the one body shape {"detail": [{"loc", "msg", "type"}]}."""

from __future__ import annotations

import httpx

from tiebreak.services.errors import BadInput, Forbidden, NotFound, TooLarge, Unauthorized, error_body
from tiebreak.services.runs import RemoteError


def test_service_errors_name_the_field():
    assert BadInput("must be > 0", "judges.0.weight").body() == error_body(
        [{"loc": ["body", "judges", "0", "weight"], "msg": "must be > 0", "type": "BadInput"}])
    assert NotFound("no run 'x'", loc=["path", "run_id"]).detail() == [
        {"loc": ["path", "run_id"], "msg": "no run 'x'", "type": "NotFound"}]
    assert Forbidden("no", loc=["header", "Authorization"], type_="forbidden").detail()[0]["type"] == "forbidden"
    u = Unauthorized("missing token")
    assert (u.status_code, u.headers, u.detail()[0]["loc"]) == (401, {"WWW-Authenticate": "Bearer"},
                                                                 ["header", "Authorization"])
    assert TooLarge("big", loc=["body"]).status_code == 413
    assert BadInput("x").detail()[0]["loc"] == []


def test_remote_errors_are_passed_on_in_the_one_shape():
    item = {"loc": ["body", "verdict"], "msg": "bad verdict", "type": "value_error"}
    as_list = RemoteError(422, httpx.Response(422, json={"detail": [item]}))
    assert (as_list.status_code, as_list.detail()) == (422, [item])
    as_str = RemoteError(409, httpx.Response(409, json={"detail": "lease taken"}))
    assert as_str.detail() == [{"loc": [], "msg": "lease taken", "type": "RemoteError"}]
    not_json = RemoteError(502, httpx.Response(502, text="Bad Gateway"))
    assert not_json.detail() == [{"loc": [], "msg": "Bad Gateway", "type": "RemoteError"}]
