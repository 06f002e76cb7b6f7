# The exchange service image: one uvicorn process per container; scale by running replicas.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

RUN useradd --system --uid 10001 --home-dir /srv/exchange exchange
WORKDIR /srv/exchange

COPY pyproject.toml README.md ./
COPY exchange ./exchange
COPY schemas ./schemas
COPY keys/README.md ./keys/README.md
RUN pip install -e '.[server]' && mkdir -p /var/lib/exchange && chown exchange /var/lib/exchange

USER exchange
ENV EXCHANGE_DATA_DIR=/var/lib/exchange
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["exchange", "serve", "--host", "0.0.0.0", "--port", "8000"]
