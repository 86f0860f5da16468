#!/usr/bin/env bash
# Submit a skyclass job to Kubernetes (cluster deploy mode) in the image built from deploy/Dockerfile, which holds
# Python 3.11, Java 17, the pinned stack, Horovod and skyclass itself: nothing is shipped at submit time.
# DRY_RUN=1 prints the spark-submit command; --help explains the options.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

skyclass_parse_job submit-k8s.sh "Kubernetes (cluster deploy mode)" \
"  K8S_API_SERVER       API server URL (default https://kubernetes.default.svc)
  SKYCLASS_IMAGE       executor and driver image (default skyclass:0.1.0, built from deploy/Dockerfile)
  K8S_NAMESPACE        namespace (default skyclass)
  K8S_SERVICE_ACCOUNT  driver service account allowed to create executor pods (default spark)
  EXECUTORS            executor pods (default 4)
  SKYCLASS_CONF        config path INSIDE the image (default /opt/skyclass/conf/cluster.yaml)" "$@"
skyclass_common_args
if [[ "${GPU:-0}" != "0" ]]; then
    # Kubernetes schedules GPUs by device-plugin resource name.
    COMMON_ARGS+=(--conf spark.executor.resource.gpu.vendor=nvidia.com)
fi

skyclass_run "$SPARK_SUBMIT" \
    --master "k8s://${K8S_API_SERVER:-https://kubernetes.default.svc}" \
    --deploy-mode cluster \
    --conf "spark.kubernetes.container.image=${SKYCLASS_IMAGE:-skyclass:0.1.0}" \
    --conf "spark.kubernetes.namespace=${K8S_NAMESPACE:-skyclass}" \
    --conf "spark.kubernetes.authenticate.driver.serviceAccountName=${K8S_SERVICE_ACCOUNT:-spark}" \
    --conf "spark.executor.instances=${EXECUTORS:-4}" \
    --conf spark.pyspark.python=/usr/local/bin/python3.11 \
    "${COMMON_ARGS[@]}" \
    "local:///opt/skyclass/jobs/$JOB.py" --conf "${SKYCLASS_CONF:-/opt/skyclass/conf/cluster.yaml}" "${JOB_ARGS[@]}"
