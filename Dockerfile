FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY newsletter ./newsletter
COPY subscribers ./subscribers
COPY tasks ./tasks
COPY templates ./templates
COPY examples ./examples
RUN pip install --no-cache-dir -e .
ENV NEWSLETTER_VAR_DIR=/data
VOLUME /data
CMD ["newsletter", "--help"]
