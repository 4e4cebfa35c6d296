#!/usr/bin/env python3
"""The "unmodified app" of the demo: plain openai SDK code calling api.openai.com (chat
completions or the Responses API), and anthropic SDK code calling api.anthropic.com.

It knows nothing about routecar: its environment has HTTPS_PROXY and
SSL_CERT_FILE (what `routecar env` prints), that's all. The tenant id header is
what a multi-tenant backend already sends; one tenant is recognised by its API
key alone. Prints one JSON line per call.
"""

from __future__ import annotations

import json
import sys

import anthropic
import openai




def call_anthropic(call: dict, prompt: str) -> tuple[str, object]:
    client = anthropic.Anthropic(api_key=call.get("api_key", "sk-ant-demo-app-key"), max_retries=0)
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=200, messages=[{"role": "user", "content": prompt}],
        extra_headers=call.get("headers", {}))
    return raw.parse().content[0].text, raw.headers


def call_responses(client: openai.OpenAI, call: dict, prompt: str) -> tuple[str, object]:
    raw = client.responses.with_raw_response.create(model="gpt-4o", input=prompt,
                                                    extra_headers=call.get("headers", {}))
    return raw.parse().output_text, raw.headers


def main() -> int:
    calls = json.loads(sys.argv[1])
    for call in calls:
        client = openai.OpenAI(api_key=call.get("api_key", "sk-demo-app-key"), max_retries=0)
        headers = call.get("headers", {})
        messages = [{"role": "user", "content": call.get("prompt", "Summarise our Q3 churn in 3 bullets.")}]
        out = {"label": call["label"]}
        try:
            if call.get("sdk") == "anthropic":
                text, hdrs = call_anthropic(call, messages[0]["content"])
            elif call.get("sdk") == "responses":
                text, hdrs = call_responses(client, call, messages[0]["content"])
            elif call.get("stream"):
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
        except (openai.APIStatusError, anthropic.APIStatusError) as e:
            body = e.body if isinstance(e.body, dict) else {}
            out.update(ok=False, status=e.status_code, error=body.get("code") or (body.get("error") or {}).get("code"),
                       **{"trace-id": e.response.headers.get("x-route-trace-id")})
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
