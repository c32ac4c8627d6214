# One image for every role (migrate, api, worker, flower); docker-compose.yml picks the command.
# CPU torch by default; for GPU workers build with a CUDA torch wheel, e.g.
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
FROM python:3.11-slim

ARG TORCH_INDEX=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 BLIP2_DATA_DIR=/data
WORKDIR /app

COPY pyproject.toml README.md ./
COPY blip2 ./blip2
COPY cli ./cli
COPY jobs ./jobs
COPY api ./api
COPY worker ./worker
COPY migrations ./migrations
COPY alembic.ini ./

RUN if [ -n "$TORCH_INDEX" ]; then pip install --no-cache-dir --index-url "$TORCH_INDEX" torch; fi \
    && pip install --no-cache-dir -e . \
    && useradd --create-home --uid 1000 blip2 && mkdir -p /data && chown blip2 /data
USER blip2
VOLUME /data
EXPOSE 8000 5555
CMD ["blip2-jobs", "api", "--host", "0.0.0.0", "--port", "8000"]
