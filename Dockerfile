# The worker image for docker-compose: the project installed in place, so config/ and templates/
# are read from /app (mount your own config over /app/config).
FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir -e ".[postgres]"
ENV L2C_CONFIG_DIR=/app/config
CMD ["l2c", "worker"]
