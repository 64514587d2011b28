"""`make bench`: the order backbone measured against its own limits (the database's and the
broker's), in one run on one machine."""
