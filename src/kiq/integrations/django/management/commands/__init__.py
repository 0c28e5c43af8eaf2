"""``manage.py kiq``: see kiq.py here."""
