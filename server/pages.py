"""The web pages: the keyboard demo (``/``) and the rounds dashboard (``/dashboard``).

Both are static HTML shells (``server/templates``) whose vanilla JavaScript
(``server/static``) talks to the JSON API: the keyboard to ``POST /v1/predict`` and
``GET /v1/status``; the dashboard to ``/v1/status``, ``/v1/rounds`` and
``/v1/evaluations``, drawn as hand-written SVG charts. Nothing is fetched from outside
the server (no CDN): the pages work on a machine without internet.
"""

from __future__ import annotations

from flask import Blueprint, render_template

bp = Blueprint("pages", __name__)


@bp.get("/")
def keyboard():
    return render_template("keyboard.html")


@bp.get("/dashboard")
def dashboard():
    return render_template("dashboard.html")
