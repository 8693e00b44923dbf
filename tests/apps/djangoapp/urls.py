"""A trailing /<tag> on any path is ignored by the views and makes each request's path unique."""
from django.urls import path

from . import views

urlpatterns = []
for route, view in [
    ("fast", views.fast),
    ("sleep/<int:ms>", views.sleep),
    ("db/sleep/<int:ms>", views.db_sleep),
    ("db/forupdate", views.db_forupdate),
    ("db/atomic-spin/<int:item>/<int:ms>", views.db_atomic_spin),
    ("pid", views.pid),
]:
    urlpatterns += [path(route, view), path(route + "/<str:tag>", view)]
