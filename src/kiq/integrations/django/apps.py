"""The Django app: ``INSTALLED_APPS += ["kiq.integrations.django"]`` applies ``settings.KIQ``."""

from __future__ import annotations

from django.apps import AppConfig  # type: ignore[import-untyped]  # Django ships no hints

from kiq.integrations.django import apply_settings


class KiqConfig(AppConfig):  # type: ignore[misc]  # AppConfig is Any without hints
    name = "kiq.integrations.django"
    label = "kiq"  # the default label would be "django"
    verbose_name = "kiq"

    def ready(self) -> None:
        apply_settings()
