"""A stand-in for Grafana's HTTP API on loopback: the endpoints routewatch uses, held to their documented shapes.

It keeps folders, data sources, dashboards, alert rules, rule groups and
annotations in memory, refuses a request without the expected bearer token
(401), and answers 400 (and records a problem) for a body that lacks what
Grafana's HTTP API documentation says the endpoint requires. Every request
is recorded as (method, path) so that a test can tell reads from writes.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from aiohttp import web

_REQUIRED = {
    ("POST", "folders"): ("title",),
    ("PUT", "folder"): ("title",),
    ("POST", "datasources"): ("name", "type", "access"),
    ("PUT", "datasource"): ("name", "type", "access"),
    ("POST", "dashboards/db"): ("dashboard",),
    ("POST", "alert-rules"): (
        "title",
        "ruleGroup",
        "folderUID",
        "condition",
        "data",
        "noDataState",
        "execErrState",
        "for",
        "orgID",
    ),
    ("PUT", "alert-rule"): ("title", "ruleGroup", "folderUID", "condition", "data", "noDataState", "execErrState"),
    ("PUT", "rule-group"): ("interval", "rules"),
    ("POST", "annotations"): ("time", "text"),
}


class GrafanaStandIn:
    """The state and handlers; :meth:`app` builds the aiohttp application."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.requests: list[tuple[str, str]] = []
        self.problems: list[str] = []
        self.folders: dict[str, dict[str, Any]] = {}
        self.datasources: dict[str, dict[str, Any]] = {}
        self.secrets: dict[str, dict[str, str]] = {}  # never returned, as Grafana never returns them
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.rules: dict[str, dict[str, Any]] = {}
        self.intervals: dict[tuple[str, str], int] = {}
        self.annotations: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    def writes(self) -> list[tuple[str, str]]:
        return [r for r in self.requests if r[0] != "GET"]

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        r = app.router
        r.add_get("/api/folders/{uid}", self.get_folder)
        r.add_post("/api/folders", self.post_folder)
        r.add_put("/api/folders/{uid}", self.put_folder)
        r.add_get("/api/datasources/uid/{uid}", self.get_datasource)
        r.add_post("/api/datasources", self.post_datasource)
        r.add_put("/api/datasources/uid/{uid}", self.put_datasource)
        r.add_get("/api/dashboards/uid/{uid}", self.get_dashboard)
        r.add_post("/api/dashboards/db", self.post_dashboard)
        r.add_get("/api/v1/provisioning/alert-rules/{uid}", self.get_rule)
        r.add_post("/api/v1/provisioning/alert-rules", self.post_rule)
        r.add_put("/api/v1/provisioning/alert-rules/{uid}", self.put_rule)
        r.add_get("/api/v1/provisioning/folder/{folder}/rule-groups/{group}", self.get_group)
        r.add_put("/api/v1/provisioning/folder/{folder}/rule-groups/{group}", self.put_group)
        r.add_get("/api/annotations", self.get_annotations)
        r.add_post("/api/annotations", self.post_annotation)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"message": "Unauthorized"}, status=401)
        if request.method in ("POST", "PUT") and request.content_type != "application/json":
            self.problems.append(f"{request.method} {request.path}: Content-Type {request.content_type}")
        response: web.StreamResponse = await handler(request)
        return response

    async def _body(self, request: web.Request, endpoint: tuple[str, str]) -> dict[str, Any]:
        body = await request.json()
        missing = [k for k in _REQUIRED[endpoint] if k not in body]
        if missing:
            self.problems.append(f"{request.method} {request.path}: missing {missing}")
            raise web.HTTPBadRequest(text='{"message": "bad request data"}', content_type="application/json")
        return dict(body)

    @staticmethod
    def _not_found(what: str) -> web.Response:
        return web.json_response({"message": f"{what} not found"}, status=404)

    # ---- folders
    async def get_folder(self, request: web.Request) -> web.Response:
        folder = self.folders.get(request.match_info["uid"])
        return web.json_response(folder) if folder else self._not_found("folder")

    async def post_folder(self, request: web.Request) -> web.Response:
        body = await self._body(request, ("POST", "folders"))
        uid = body.get("uid") or f"f{next(self._ids)}"
        if uid in self.folders:
            return web.json_response({"message": "a folder with the same uid already exists"}, status=409)
        self.folders[uid] = {"id": next(self._ids), "uid": uid, "title": body["title"], "version": 1}
        return web.json_response(self.folders[uid])

    async def put_folder(self, request: web.Request) -> web.Response:
        body = await self._body(request, ("PUT", "folder"))
        folder = self.folders.get(request.match_info["uid"])
        if folder is None:
            return self._not_found("folder")
        if not body.get("overwrite") and body.get("version") != folder["version"]:
            return web.json_response({"message": "version mismatch"}, status=412)
        folder.update(title=body["title"], version=folder["version"] + 1)
        return web.json_response(folder)

    # ---- data sources
    def _shown_datasource(self, uid: str) -> dict[str, Any]:
        ds = copy.deepcopy(self.datasources[uid])
        ds["secureJsonFields"] = dict.fromkeys(self.secrets.get(uid, {}), True)
        return ds

    async def get_datasource(self, request: web.Request) -> web.Response:
        uid = request.match_info["uid"]
        return (
            web.json_response(self._shown_datasource(uid))
            if uid in self.datasources
            else self._not_found("data source")
        )

    def _store_datasource(self, uid: str, body: dict[str, Any], ds_id: int) -> None:
        secure = body.pop("secureJsonData", None)
        if secure:
            self.secrets[uid] = dict(secure)
        self.datasources[uid] = {"id": ds_id, "orgId": 1, "readOnly": False, "basicAuth": False, **body, "uid": uid}

    async def post_datasource(self, request: web.Request) -> web.Response:
        body = await self._body(request, ("POST", "datasources"))
        uid = body.get("uid") or f"d{next(self._ids)}"
        if uid in self.datasources or any(d["name"] == body["name"] for d in self.datasources.values()):
            return web.json_response({"message": "data source with the same name already exists"}, status=409)
        self._store_datasource(uid, body, next(self._ids))
        shown = self._shown_datasource(uid)
        return web.json_response(
            {"datasource": shown, "id": shown["id"], "message": "Datasource added", "name": body["name"]}
        )

    async def put_datasource(self, request: web.Request) -> web.Response:
        uid = request.match_info["uid"]
        body = await self._body(request, ("PUT", "datasource"))
        if uid not in self.datasources:
            return self._not_found("data source")
        self._store_datasource(uid, body, self.datasources[uid]["id"])
        return web.json_response({"datasource": self._shown_datasource(uid), "message": "Datasource updated"})

    # ---- dashboards
    async def get_dashboard(self, request: web.Request) -> web.Response:
        found = self.dashboards.get(request.match_info["uid"])
        return web.json_response(found) if found else self._not_found("Dashboard")

    async def post_dashboard(self, request: web.Request) -> web.Response:
        body = await self._body(request, ("POST", "dashboards/db"))
        dashboard = dict(body["dashboard"])
        if "title" not in dashboard or not dashboard.get("uid"):
            self.problems.append("POST /api/dashboards/db: dashboard without title or uid")
            return web.json_response({"message": "Dashboard title cannot be empty"}, status=400)
        folder = body.get("folderUid")
        if folder is not None and folder not in self.folders:
            return web.json_response({"message": "folder not found"}, status=400)
        old = self.dashboards.get(dashboard["uid"])
        if old is not None and not body.get("overwrite"):
            return web.json_response({"message": "The dashboard has been changed by someone else"}, status=412)
        version = old["dashboard"]["version"] + 1 if old else 1
        dash_id = old["dashboard"]["id"] if old else next(self._ids)
        dashboard.update(id=dash_id, version=version)
        self.dashboards[dashboard["uid"]] = {
            "dashboard": dashboard,
            "meta": {"folderUid": folder or "", "version": version},
        }
        return web.json_response(
            {
                "id": dash_id,
                "uid": dashboard["uid"],
                "status": "success",
                "version": version,
                "url": f"/d/{dashboard['uid']}",
            }
        )

    # ---- alert rules and groups
    async def get_rule(self, request: web.Request) -> web.Response:
        rule = self.rules.get(request.match_info["uid"])
        return web.json_response(rule) if rule else self._not_found("alert rule")

    def _store_rule(self, body: dict[str, Any]) -> dict[str, Any]:
        if body["folderUID"] not in self.folders:
            raise web.HTTPBadRequest(text='{"message": "folder does not exist"}', content_type="application/json")
        rule = {"id": next(self._ids), **body, "updated": "2026-11-29T00:00:00Z", "provenance": "api"}
        self.rules[body["uid"]] = rule
        self.intervals.setdefault((body["folderUID"], body["ruleGroup"]), 60)
        return rule

    async def post_rule(self, request: web.Request) -> web.Response:
        body = await self._body(request, ("POST", "alert-rules"))
        if body.get("uid") in self.rules:
            return web.json_response({"message": "conflict"}, status=409)
        return web.json_response(self._store_rule(body), status=201)

    async def put_rule(self, request: web.Request) -> web.Response:
        body = await self._body(request, ("PUT", "alert-rule"))
        if request.match_info["uid"] not in self.rules:
            return self._not_found("alert rule")
        return web.json_response(self._store_rule({**body, "uid": request.match_info["uid"]}))

    async def get_group(self, request: web.Request) -> web.Response:
        key = (request.match_info["folder"], request.match_info["group"])
        if key not in self.intervals:
            return self._not_found("rule group")
        rules = [r for r in self.rules.values() if (r["folderUID"], r["ruleGroup"]) == key]
        return web.json_response(
            {"title": key[1], "folderUid": key[0], "interval": self.intervals[key], "rules": rules}
        )

    async def put_group(self, request: web.Request) -> web.Response:
        body = await self._body(request, ("PUT", "rule-group"))
        key = (request.match_info["folder"], request.match_info["group"])
        self.intervals[key] = int(body["interval"])
        return web.json_response(
            {"title": key[1], "folderUid": key[0], "interval": self.intervals[key], "rules": body["rules"]}
        )

    # ---- annotations
    async def get_annotations(self, request: web.Request) -> web.Response:
        tags = request.query.getall("tags", [])
        found = [a for a in self.annotations if all(t in a["tags"] for t in tags)]
        return web.json_response(found[: int(request.query.get("limit", "100"))])

    async def post_annotation(self, request: web.Request) -> web.Response:
        body = await self._body(request, ("POST", "annotations"))
        if not isinstance(body.get("tags", []), list) or not isinstance(body["time"], int):
            self.problems.append("POST /api/annotations: tags must be a list and time epoch milliseconds")
        annotation = {"id": next(self._ids), **body}
        self.annotations.append(annotation)
        return web.json_response({"message": "Annotation added", "id": annotation["id"]})
