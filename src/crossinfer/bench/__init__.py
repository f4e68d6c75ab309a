"""`bench`: MLPerf LoadGen scenarios over any backend session, and the numbers each run records."""
