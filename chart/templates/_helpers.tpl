{{/*
Names are the control plane's (control-plane/README.md): one mesh per
cluster, installed in Istio's root namespace (the release namespace, e.g.
istio-system), where the control plane keeps the CA Secret `cacerts` and the
leader Lease, and where it takes the ServiceAccount `ztunnel` for the node
proxies' and the Service `control-plane` for its own serving certificate.
*/}}
{{- define "mesh.controlPlane.name" -}}
control-plane
{{- end -}}

{{- define "mesh.ztunnel.name" -}}
ztunnel
{{- end -}}

{{/* Cluster-scoped objects. */}}
{{- define "mesh.clusterName" -}}
ambient-mesh-control-plane
{{- end -}}

{{/* The leader-election Lease (control-plane leader::DEFAULT_LEASE_NAME). */}}
{{- define "mesh.leaseName" -}}
ambient-mesh-control-plane
{{- end -}}

{{/* The name ztunnel dials: one of the Service's DNS names, which the
serving certificate carries. */}}
{{- define "mesh.controlPlane.host" -}}
{{- printf "%s.%s.svc" (include "mesh.controlPlane.name" .) .Release.Namespace -}}
{{- end -}}

{{- define "mesh.rootNamespace" -}}
{{- .Release.Namespace -}}
{{- end -}}

{{- define "mesh.image" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- printf "%s/%s:%s" $root.Values.images.registry $name ($root.Values.images.tag | default $root.Chart.AppVersion) -}}
{{- end -}}

{{- define "mesh.labels" -}}
app.kubernetes.io/part-of: ambient-mesh
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "mesh.controlPlane.selector" -}}
app.kubernetes.io/name: control-plane
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mesh.ztunnel.selector" -}}
app.kubernetes.io/name: ztunnel
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mesh.pullSecrets" -}}
{{- with .Values.images.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
A pod's annotations: Prometheus' scrape annotations (when
prometheus.scrape) and the component's podAnnotations. Arguments: the root
context, the metrics port, the podAnnotations.
*/}}
{{- define "mesh.podAnnotations" -}}
{{- $root := index . 0 -}}
{{- $ann := dict -}}
{{- if $root.Values.prometheus.scrape -}}
{{- $_ := set $ann "prometheus.io/scrape" "true" -}}
{{- $_ := set $ann "prometheus.io/port" (toString (index . 1)) -}}
{{- $_ := set $ann "prometheus.io/path" "/metrics" -}}
{{- end -}}
{{- $ann = merge (deepCopy (index . 2)) $ann -}}
{{- with $ann }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
