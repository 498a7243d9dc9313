# A stand-in for Docker Hub's nginx:1.27-bookworm (unreachable where the tests run): Debian's
# nginx on the local base, reading /etc/nginx/conf.d/*.conf as that image does, logging to stdout.
ARG BASE_IMAGE=ragserve-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx-light \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && rm -f /etc/nginx/sites-enabled/default \
 && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
