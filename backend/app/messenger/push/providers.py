"""Making the providers that have settings; each one without is off, said once."""

from __future__ import annotations

import logging

from app.config import ConfigError, Settings
from app.messenger.push import apns, fcm, webpush
from app.messenger.push.base import Provider

log = logging.getLogger(__name__)

MODULES = {"web_push": webpush, "fcm": fcm, "apns": apns}


async def start_providers(settings: Settings) -> dict[str, Provider]:
    providers: dict[str, Provider] = {}
    for name, module in MODULES.items():
        try:
            provider = module.from_settings(settings)
            if provider is None:
                log.warning("push provider %s is off: it has no settings", name)
                continue
            await provider.start()
        except ConfigError as exc:
            # Half set up (a missing key file, a mismatched key): off, and said loudly.
            log.error("push provider %s is off: %s", name, exc)
            continue
        except Exception:
            log.exception("push provider %s is off: it failed to start", name)
            continue
        providers[name] = provider
        log.info("push provider %s is on", name)
    return providers
