{{/*
Structural schemas of Istio's security.istio.io kinds that the control plane
reads, as Istio's API defines them (istio.io/api security/v1). Served as v1
(stored) and v1beta1 with the same schema, so no conversion is needed.
*/}}
{{- define "mesh.crd.strings" -}}
type: array
items:
  type: string
{{- end -}}

{{- define "mesh.crd.selector" -}}
type: object
description: Workloads the policy applies to, by pod labels. Empty or absent, every workload of the namespace.
properties:
  matchLabels:
    type: object
    additionalProperties:
      type: string
{{- end -}}

{{- define "mesh.crd.targetRef" -}}
type: object
required: [kind, name]
properties:
  group:
    type: string
  kind:
    type: string
  name:
    type: string
  namespace:
    type: string
{{- end -}}

{{- define "mesh.crd.authorizationPolicy.schema" -}}
openAPIV3Schema:
  type: object
  properties:
    spec:
      type: object
      description: Access control on workloads (ztunnel) or on the Services and Gateways of a waypoint (targetRefs).
      properties:
        selector:
          {{- include "mesh.crd.selector" . | nindent 10 }}
        targetRef:
          {{- include "mesh.crd.targetRef" . | nindent 10 }}
        targetRefs:
          type: array
          items:
            {{- include "mesh.crd.targetRef" . | nindent 12 }}
        action:
          type: string
          enum: [ALLOW, DENY, AUDIT, CUSTOM]
        provider:
          type: object
          properties:
            name:
              type: string
        rules:
          type: array
          items:
            type: object
            properties:
              from:
                type: array
                items:
                  type: object
                  properties:
                    source:
                      type: object
                      properties:
                        {{- range list "principals" "notPrincipals" "requestPrincipals" "notRequestPrincipals" "namespaces" "notNamespaces" "serviceAccounts" "notServiceAccounts" "ipBlocks" "notIpBlocks" "remoteIpBlocks" "notRemoteIpBlocks" }}
                        {{ . }}:
                          {{- include "mesh.crd.strings" $ | nindent 26 }}
                        {{- end }}
              to:
                type: array
                items:
                  type: object
                  properties:
                    operation:
                      type: object
                      properties:
                        {{- range list "hosts" "notHosts" "ports" "notPorts" "methods" "notMethods" "paths" "notPaths" }}
                        {{ . }}:
                          {{- include "mesh.crd.strings" $ | nindent 26 }}
                        {{- end }}
              when:
                type: array
                items:
                  type: object
                  required: [key]
                  properties:
                    key:
                      type: string
                    values:
                      {{- include "mesh.crd.strings" . | nindent 22 }}
                    notValues:
                      {{- include "mesh.crd.strings" . | nindent 22 }}
    status:
      type: object
      x-kubernetes-preserve-unknown-fields: true
{{- end -}}

{{- define "mesh.crd.peerAuthentication.schema" -}}
openAPIV3Schema:
  type: object
  properties:
    spec:
      type: object
      description: The mutual TLS mode that workloads accept.
      properties:
        selector:
          {{- include "mesh.crd.selector" . | nindent 10 }}
        mtls:
          type: object
          properties:
            mode:
              type: string
              enum: [UNSET, DISABLE, PERMISSIVE, STRICT]
        portLevelMtls:
          type: object
          additionalProperties:
            type: object
            properties:
              mode:
                type: string
                enum: [UNSET, DISABLE, PERMISSIVE, STRICT]
    status:
      type: object
      x-kubernetes-preserve-unknown-fields: true
{{- end -}}
