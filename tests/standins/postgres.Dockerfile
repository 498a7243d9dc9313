# A stand-in for Docker Hub's postgres:15-bookworm (unreachable where the tests run), built on the
# local base with Debian's PostgreSQL 15. It keeps the part of that image's contract that
# docker/compose.yaml uses: POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB on a first start,
# data in /var/lib/postgresql/data, pg_isready, password logins from other containers.
ARG BASE_IMAGE=ragserve-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
