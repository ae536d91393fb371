"""A listkeeper provider: posts each notification as one chat message to an incoming web hook.

listkeeper calls `notify(payload, options)` for a Notification action `{type: provider, name: chat}`:
`payload` is the JSON the web hook action would send ({notification, event: {id, type, at, attributes},
count, previous_run}); `options` is the action's `options` mapping. A coroutine function is awaited
under the action's timeout; raising marks the action failed (listkeeper logs it and carries on).

Options: url (required; or url_env naming an environment variable that holds it), channel, username.
"""

from __future__ import annotations

import os

import aiohttp


def message(payload: dict) -> str:
    event = payload["event"]
    details = ", ".join(f"{k}={', '.join(map(str, v)) if isinstance(v, list) else v}"
                        for k, v in event["attributes"].items())
    times = f" ({payload['count']} times since {payload['previous_run']})" if payload["count"] > 1 else ""
    return f"[{payload['notification']}] {event['type']} at {event['at']}{times}: {details}"


async def notify(payload: dict, options: dict) -> None:
    url = options.get("url") or os.environ.get(options.get("url_env", ""), "")
    if not url:
        raise ValueError("give the option url, or url_env naming an environment variable holding it")
    body = {"text": message(payload)}
    for key in ("channel", "username"):
        if options.get(key):
            body[key] = options[key]
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=10)) as response:
            if response.status >= 300:
                raise RuntimeError(f"the chat answered HTTP {response.status}")
