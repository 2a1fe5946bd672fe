"""Typed keys of the gateway's application and request state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from chatsvc.client import IMServiceClient
from gateway.connections import ConnectionLimiter
from gateway.settings import GatewaySettings

if TYPE_CHECKING:  # gateway.auth imports this module
    from gateway.auth import Identity

SETTINGS = web.AppKey("settings", GatewaySettings)
CHATSVC = web.AppKey("chatsvc", IMServiceClient)  # a ChatClient, or a BalancedClient
CONNECTIONS = web.AppKey("connections", ConnectionLimiter)
OPENAPI_JSON = web.AppKey("openapi_json", bytes)  # docs/openapi.yaml as JSON, loaded once
IDENTITY: web.RequestKey[Identity] = web.RequestKey("identity")  # set by gateway.auth.middleware
