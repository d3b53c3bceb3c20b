"""What users may do to clusters, in transactions: create and delete (``lifecycle``), job control
(``operations``), day-2 changes (``day2``), previews (``preview``), and lease expiry (``lease_expiry``).

May import ``features``, ``engine``, ``planning``, ``models`` and ``clusters.selectors``; never a face.
"""
