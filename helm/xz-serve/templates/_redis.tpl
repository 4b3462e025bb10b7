{{/*
A durable Redis, shared by the store and the GCS's Redis: a one-pod StatefulSet with its
append-only file on a PVC and `noeviction` (at its memory cap it refuses writes rather than drop a
key), and its headless Service. Usage:
  include "xz-serve.durableRedis" (dict "root" $ "suffix" "redis" "component" "redis"
    "values" .Values.redis "secretName" "<Secret with the password, or empty>" "secretKey" "<key>"
    "annotations" (dict ...))
*/}}
{{- define "xz-serve.durableRedis" -}}
{{- $ := .root -}}
{{- $v := .values -}}
{{- $name := printf "%s-%s" (include "xz-serve.fullname" $) .suffix -}}
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ $name }}
  labels:
    {{- include "xz-serve.labels" $ | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  serviceName: {{ $name }}
  replicas: 1
  selector:
    matchLabels:
      {{- include "xz-serve.selectorLabels" $ | nindent 6 }}
      app.kubernetes.io/component: {{ .component }}
  template:
    metadata:
      labels:
        {{- include "xz-serve.podLabels" $ | nindent 8 }}
        app.kubernetes.io/component: {{ .component }}
      {{- with .annotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      {{- with $.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        runAsNonRoot: true
        runAsUser: 999
        runAsGroup: 999
        fsGroup: 999
      containers:
        - name: redis
          image: "{{ $.Values.redis.image.repository }}:{{ $.Values.redis.image.tag }}"
          imagePullPolicy: {{ $.Values.redis.image.pullPolicy }}
          command: [redis-server]
          # Durability: every write goes to the append-only file on the PVC (fsynced per
          # `appendfsync`), so a restarted pod comes back with its data.
          args:
            - --appendonly
            - "yes"
            - --appendfsync
            - {{ $v.appendfsync | quote }}
            - --dir
            - /data
            # Durable data, not a cache: at its memory cap it refuses writes instead of dropping keys.
            - --maxmemory-policy
            - noeviction
            {{- if .secretName }}
            - --requirepass
            - $(REDIS_PASSWORD)
            {{- end }}
            {{- range $v.extraArgs }}
            - {{ . | toString | quote }}
            {{- end }}
          {{- if .secretName }}
          env:
            - name: REDIS_PASSWORD
              valueFrom:
                secretKeyRef:
                  name: {{ .secretName }}
                  key: {{ .secretKey }}
            # redis-cli (the probes) reads the password from here.
            - name: REDISCLI_AUTH
              valueFrom:
                secretKeyRef:
                  name: {{ .secretName }}
                  key: {{ .secretKey }}
          {{- end }}
          ports:
            - name: redis
              containerPort: 6379
              protocol: TCP
          readinessProbe:
            exec:
              command: [redis-cli, ping]
            periodSeconds: 5
            timeoutSeconds: 2
          livenessProbe:
            tcpSocket:
              port: redis
            initialDelaySeconds: 15
            periodSeconds: 10
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities:
              drop: [ALL]
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          volumeMounts:
            - name: data
              mountPath: /data
  volumeClaimTemplates:
    - metadata:
        name: data
        labels:
          {{- include "xz-serve.selectorLabels" $ | nindent 10 }}
          app.kubernetes.io/component: {{ .component }}
      spec:
        accessModes: [ReadWriteOnce]
        {{- with $v.persistence.storageClassName }}
        storageClassName: {{ . }}
        {{- end }}
        resources:
          requests:
            storage: {{ $v.persistence.size }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  labels:
    {{- include "xz-serve.labels" $ | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  # Headless: the StatefulSet's governing Service, and with one pod also the clients' address.
  clusterIP: None
  selector:
    {{- include "xz-serve.selectorLabels" $ | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
  ports:
    - name: redis
      port: 6379
      targetPort: redis
      protocol: TCP
{{- end -}}
