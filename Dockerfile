# One image for every clinic process: `clinic serve|worker|db upgrade ...` (see CONTRACT.md).
# Built without network access to anything but PyPI; versions pinned by constraints.txt.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml constraints.txt ./
COPY shared ./shared
COPY services ./services
# A regular (not editable) install: the runtime stage needs only the venv, not /src.
RUN /opt/venv/bin/pip install --constraint constraints.txt .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CLINIC_VAR_DIR=/app/var
RUN groupadd --system --gid 10001 clinic \
    && useradd --system --uid 10001 --gid clinic --home-dir /app --no-create-home clinic \
    && mkdir -p /app/var /tmp/prometheus \
    && chown -R clinic:clinic /app /tmp/prometheus
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["clinic"]
CMD ["--help"]
