"""Typed keys of the gateway's application state."""

from __future__ import annotations

from aiohttp import web

from chatsvc.client import ChatClient
from gateway.settings import GatewaySettings

SETTINGS = web.AppKey("settings", GatewaySettings)
CHATSVC = web.AppKey("chatsvc", ChatClient)
