#!/usr/bin/env python3
"""The "unmodified app" of the demo: plain openai SDK code calling api.openai.com.

It knows nothing about routecar: its environment has HTTPS_PROXY and
SSL_CERT_FILE (what `routecar env` prints), that's all. The tenant id header is
what a multi-tenant backend already sends; one tenant is recognised by its API
key alone. Prints one JSON line per call.
"""

from __future__ import annotations

import json
import sys

import openai


def main() -> int:
    calls = json.loads(sys.argv[1])
    for call in calls:
        client = openai.OpenAI(api_key=call.get("api_key", "sk-demo-app-key"), max_retries=0)
        headers = call.get("headers", {})
        messages = [{"role": "user", "content": call.get("prompt", "Summarise our Q3 churn in 3 bullets.")}]
        out = {"label": call["label"]}
        try:
            if call.get("stream"):
                with client.chat.completions.with_streaming_response.create(
                        model="gpt-4o", messages=messages, stream=True, extra_headers=headers) as raw:
                    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
                    hdrs = raw.headers
            else:
                raw = client.chat.completions.with_raw_response.create(
                    model="gpt-4o", messages=messages, extra_headers=headers)
                text = raw.parse().choices[0].message.content
                hdrs = raw.headers
            out.update(ok=True, text=text, **{k: hdrs.get(f"x-route-{k}") for k in
                                               ("trace-id", "model", "provider", "fingerprint", "attempts")})
        except openai.APIStatusError as e:
            out.update(ok=False, status=e.status_code, error=(e.body or {}).get("code"),
                       **{"trace-id": e.response.headers.get("x-route-trace-id")})
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
