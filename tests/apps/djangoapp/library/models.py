"""Two tables with a foreign key, the ORM's N+1 case: listing books and, lazily, each one's
author. The tests create the tables (library_author, library_book) themselves."""
from django.db import models


class Author(models.Model):
    name = models.CharField(max_length=64)


class Book(models.Model):
    title = models.CharField(max_length=64)
    author = models.ForeignKey(Author, on_delete=models.CASCADE)
