"""A trailing /<tag> on any path is ignored by the views and makes each request's path unique."""
from django.urls import path

from . import views
from .library import views as library

urlpatterns = []
for route, view in [
    ("fast", views.fast),
    ("sleep/<int:ms>", views.sleep),
    ("catalog/<int:ms>", views.catalog),
    ("report/<int:ms>", views.report),
    ("db/sleep/<int:ms>", views.db_sleep),
    ("db/forupdate", views.db_forupdate),
    ("db/hold/<int:ms>", views.db_hold),
    ("db/atomic-spin/<int:item>/<int:ms>", views.db_atomic_spin),
    ("db/atomic-bigint/<int:item>", views.db_atomic_bigint),
    ("db/atomic-sum/<int:item>", views.db_atomic_sum),
    ("pid", views.pid),
    ("library/books/n1", library.books_n1),
    ("library/books/joined", library.books_joined),
    ("library/four", library.four_lookups),
    ("library/shapes", library.twenty_shapes),
    ("library/same", library.same_twice),
    ("library/unique", library.unique_violation),
    ("library/secret", library.secret),
    ("library/long", library.long_statement),
    ("library/open", library.left_open),
]:
    urlpatterns += [path(route, view), path(route + "/<str:tag>", view)]
