# The fleet's load balancer: HAProxy from Debian's own packages (no registry but Debian's).
#
#   docker compose -f deploy/fleet/compose.yml build balancer
#
# Debian trixie ships HAProxy 3.0 (LTS): `retry-on` with 503/empty-response/response-timeout,
# `server-template` and DNS `resolvers` are all there (HAProxy >= 2.0).
FROM debian:trixie-slim
ARG DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/*
COPY haproxy.cfg /usr/local/etc/haproxy/haproxy.cfg
USER haproxy
EXPOSE 8000 8404
STOPSIGNAL SIGUSR1
ENTRYPOINT ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
