{{/* Labels every object of the release carries. */}}
{{- define "ciphermesh.labels" -}}
app.kubernetes.io/part-of: ciphermesh
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The agent and operator image. */}}
{{- define "ciphermesh.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end }}

{{/* Whether the encryption mode is IPsec: the key Secret is mounted only then. */}}
{{- define "ciphermesh.ipsec" -}}
{{- if and .Values.encryption.enabled (eq .Values.encryption.type "ipsec") }}true{{ end }}
{{- end }}

{{/* Whether the operator rotates the IPsec key: IPsec on and a non-zero autoRotateInterval. A validated
Go duration is zero exactly when it has no digit 1-9 (its units have no digits). */}}
{{- define "ciphermesh.autoRotate" -}}
{{- if and (include "ciphermesh.ipsec" .) (regexMatch "[1-9]" (toString .Values.encryption.ipsec.autoRotateInterval)) }}true{{ end }}
{{- end }}
