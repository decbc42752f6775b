{{/*
Names. Every object is namespaced to the release's namespace; cluster-scoped
ones carry the release's name so two releases cannot collide.
*/}}
{{- define "mesh.name" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "mesh.controlPlane.name" -}}
{{- printf "%s-control-plane" (include "mesh.name" .) -}}
{{- end -}}

{{- define "mesh.ztunnel.name" -}}
{{- printf "%s-ztunnel" (include "mesh.name" .) -}}
{{- end -}}

{{/* The Service's DNS names: what the serving certificate carries. */}}
{{- define "mesh.controlPlane.host" -}}
{{- printf "%s.%s.svc" (include "mesh.controlPlane.name" .) .Release.Namespace -}}
{{- end -}}

{{- define "mesh.rootNamespace" -}}
{{- .Values.rootNamespace | default .Release.Namespace -}}
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

{{- define "mesh.leaderElection" -}}
{{- if gt (int .Values.controlPlane.replicas) 1 }}true{{ else }}false{{ end -}}
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
