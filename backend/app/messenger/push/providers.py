"""Making the providers that have settings; each one without is off, said once."""

from __future__ import annotations

import logging

from app.config import Settings
import importlib
from app.messenger.push.base import Provider

log = logging.getLogger(__name__)

MODULES = {"web_push": "webpush", "fcm": "fcm", "apns": "apns"}  # TEMP


async def start_providers(settings: Settings) -> dict[str, Provider]:
    providers: dict[str, Provider] = {}
    for name, modname in MODULES.items():
        try:
            module = importlib.import_module(f"app.messenger.push.{modname}")
        except ImportError:
            continue
        provider = module.from_settings(settings)
        if provider is None:
            log.warning("push provider %s is off: its settings are missing", name)
            continue
        try:
            await provider.start()
        except Exception:
            log.exception("push provider %s is off: it failed to start", name)
            continue
        providers[name] = provider
        log.info("push provider %s is on", name)
    return providers
