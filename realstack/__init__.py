"""The real stack's life, as the tests and `make bench` both need it: this machine's MariaDB, Redis and
RabbitMQ (`machine`: started, stopped, checked; a database, a vhost of one's own: `resources`), a RabbitMQ
cluster of three nodes beside them (`cluster`), and the service's own processes (`processes`), on ports
of loopback (`net`). What is measured of them, and how it is reported, lives in `bench/`; what is asserted,
in `tests/`.
"""
