from django.contrib.auth import views as auth_views
from django.urls import path

from . import views

app_name = "frontend"
urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(template_name="frontend/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(next_page="/login/"), name="logout"),
    path("tenant/", views.tenant_switch, name="tenant-switch"),
    path("tokens/", views.tokens, name="tokens"),
    path("tokens/<int:pk>/revoke/", views.token_revoke, name="token-revoke"),
    path("clusters/", views.clusters, name="clusters"),
    path("clusters/new/", views.cluster_new, name="cluster-new"),
    path("clusters/<int:pk>/", views.cluster, name="cluster"),
    path("clusters/<int:pk>/live/", views.cluster_live, name="cluster-live"),
    path("clusters/<int:pk>/<slug:slug>/", views.cluster_operation, name="cluster-operation"),
]
