"""The example project's URLs."""

from __future__ import annotations

from django.urls import path

from examples.django_app import views

urlpatterns = [
    path("", views.session),
    path("dirty", views.dirty),
    path("fail/<str:tag>", views.fail),
    path("nested/<str:tag>", views.nested),
]
