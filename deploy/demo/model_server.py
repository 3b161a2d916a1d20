"""The demo's model server: ``POST /predict`` with a JSON object of features.

    python -m deploy.demo.model_server --model model.json --version 1 --port 9000

It answers ``{"churn_probability": p, "churn": bool}`` and names its version in the
``X-Model-Version`` response header, as many model servers do.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aiohttp import web

from deploy.demo.model import predict_proba


def create_app(model: dict, version: str) -> web.Application:
    async def predict(request: web.Request) -> web.Response:
        try:
            row = await request.json()
            probability = predict_proba(model, {name: float(row[name]) for name in model["features"]})
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": f"expected a JSON object with {model['features']}: {exc}"},
                                     status=400, headers={"X-Model-Version": version})
        body = {"churn_probability": round(probability, 6), "churn": probability >= 0.5}
        return web.json_response(body, headers={"X-Model-Version": version})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model_version": version})

    app = web.Application()
    app.add_routes([web.post("/predict", predict), web.get("/healthz", healthz)])
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    web.run_app(create_app(json.loads(args.model.read_text()), args.version),
                host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
