"""Django management commands of kiq (``manage.py kiq ...``)."""
