// Workspace-side detections: Sentinel onboarding (optional), the scheduled analytic rules and the
// connector health rules. Deployed into the workspace's resource group, last of all (main.bicep):
// creating a rule runs its query, and a table created seconds before may not be visible yet. The
// tables come from tables.bicep.

@description('Name of the existing Log Analytics workspace.')
param workspaceName string

@description('Create the scheduled analytic rules.')
param deployAnalyticRules bool

@description('Create the connector health rules.')
param deployHealthRules bool

@description('Pulumi organizations the connector collects; the connector-down health rule expects a health row from each.')
param pulumiOrgs array

@description('Onboard Microsoft Sentinel on the workspace (only if it is not onboarded yet).')
param onboardSentinel bool

@description('The deployment\'s baseName: the key of the rules that carry this copy\'s own parameters.')
param baseName string

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: workspaceName
}

resource sentinelOnboarding 'Microsoft.SecurityInsights/onboardingStates@2024-09-01' = if (onboardSentinel) {
  scope: workspace
  name: 'default'
  properties: {}
}

// Shared account/IP entity mappings.
var accountFromUserLogin = {
  entityType: 'Account'
  fieldMappings: [
    { identifier: 'Name', columnName: 'UserLogin_s' }
  ]
}
var accountFromIdentity = {
  entityType: 'Account'
  fieldMappings: [
    { identifier: 'Name', columnName: 'Identity' }
  ]
}
var ipFromSourceIp = {
  entityType: 'IP'
  fieldMappings: [
    { identifier: 'Address', columnName: 'SourceIP_s' }
  ]
}
var ipFromFirstSourceIp = {
  entityType: 'IP'
  fieldMappings: [
    { identifier: 'Address', columnName: 'SourceIP' }
  ]
}
var orgDetail = {
  PulumiOrg: 'OrgName_s'
}

// Every detection query windows on EventTime_t (the original event time) so that a backfill, whose
// TimeGenerated Azure may restamp to the ingestion time, never raises alerts. The health rules
// (deploy: deployHealthRules) are about the connector itself: connector-silent looks at ingestion time, the
// others at PulumiAuditConnectorHealth_CL.
// The connector-down rule's `let ConfiguredOrgs = dynamic([]);` is filled in with pulumiOrgs.
var configuredOrgsPlaceholder = 'let ConfiguredOrgs = dynamic([]);'
var analyticRules = [
  {
    key: 'excessive-auth-failures'
    displayName: 'Pulumi Cloud - Excessive Authentication Failures'
    description: 'More than 5 failed authentications (failed sign-ins included) from one source IP within a 15-minute bin of event time (derived from the official Pulumi rule, changed to count failed sign-ins and late rows, and to alert once per bin).'
    query: loadTextContent('../rules/excessive-auth-failures.kql')
    severity: 'Medium'
    queryFrequency: 'PT15M'
    queryPeriod: 'PT2H'
    tactics: [ 'CredentialAccess', 'InitialAccess' ]
    techniques: [ 'T1110' ]
    entityMappings: [
      {
        entityType: 'Account'
        fieldMappings: [
          { identifier: 'Name', columnName: 'Account' }
        ]
      }
      ipFromSourceIp
    ]
    customDetails: {
      PulumiOrg: 'OrgName_s'
      FailedAttempts: 'FailCount'
    }
    alertPerResult: true
    groupIncidentsByOrg: false
    deploy: deployAnalyticRules
  }
  {
    key: 'stack-deleted'
    displayName: 'Pulumi Cloud - Stack Deleted'
    description: 'A Pulumi stack was deleted (derived from the official Pulumi rule, changed to see rows that land after their event time).'
    query: loadTextContent('../rules/stack-deleted.kql')
    severity: 'Medium'
    queryFrequency: 'PT5M'
    queryPeriod: 'PT2H'
    tactics: [ 'Impact' ]
    techniques: [ 'T1485' ]
    entityMappings: [ accountFromUserLogin, ipFromSourceIp ]
    customDetails: orgDetail
    alertPerResult: false
    groupIncidentsByOrg: false
    deploy: deployAnalyticRules
  }
  {
    key: 'org-membership-change'
    displayName: 'Pulumi Cloud - Organization Membership Change'
    description: 'A member was added to or removed from a Pulumi organization, or their role changed (derived from the official Pulumi rule, changed to see rows that land after their event time).'
    query: loadTextContent('../rules/org-membership-change.kql')
    severity: 'Low'
    queryFrequency: 'PT5M'
    queryPeriod: 'PT2H'
    tactics: [ 'Persistence' ]
    techniques: [ 'T1098' ]
    entityMappings: [ accountFromUserLogin, ipFromSourceIp ]
    customDetails: orgDetail
    alertPerResult: false
    groupIncidentsByOrg: false
    deploy: deployAnalyticRules
  }
  {
    key: 'esc-unauthorized-environment-open'
    displayName: 'Pulumi ESC - Unauthorized Environment Access'
    description: 'An identity tried to open, clone or import an ESC environment it may not read (environment-unauthorized-open or auth-failure-environment). One alert per identity and source IP per run.'
    query: loadTextContent('../rules/esc-unauthorized-environment-open.kql')
    severity: 'Medium'
    queryFrequency: 'PT15M'
    queryPeriod: 'PT2H'
    tactics: [ 'CredentialAccess', 'Discovery' ]
    techniques: [ 'T1555' ]
    entityMappings: [ accountFromIdentity, ipFromSourceIp ]
    customDetails: {
      PulumiOrg: 'OrgName_s'
      Attempts: 'Attempts'
    }
    alertPerResult: true
    groupIncidentsByOrg: false
    deploy: deployAnalyticRules
  }
  {
    key: 'esc-environment-open-burst'
    displayName: 'Pulumi ESC - Burst of Environment Opens or Decrypts'
    description: 'One identity opened, decrypted or read the resolved values of ESC environments more than 50 times within a 15-minute bin of event time (threshold: let threshold = 50 in the query; raise it for busy CI identities). One alert per identity and bin.'
    query: loadTextContent('../rules/esc-environment-open-burst.kql')
    severity: 'Medium'
    queryFrequency: 'PT15M'
    queryPeriod: 'PT2H'
    tactics: [ 'CredentialAccess', 'Collection' ]
    techniques: [ 'T1555' ]
    entityMappings: [ accountFromIdentity, ipFromFirstSourceIp ]
    customDetails: {
      PulumiOrg: 'OrgName_s'
      Operations: 'Operations'
    }
    alertPerResult: true
    groupIncidentsByOrg: false
    deploy: deployAnalyticRules
  }
  {
    key: 'esc-secret-rotation-failed'
    displayName: 'Pulumi ESC - Secret Rotation Failed'
    description: 'An ESC environment secret rotation ran and its description does not report success (environment-rotated); the old credential may still be valid.'
    query: loadTextContent('../rules/esc-secret-rotation-failed.kql')
    severity: 'Low'
    queryFrequency: 'PT15M'
    queryPeriod: 'PT2H'
    tactics: [ 'CredentialAccess' ]
    techniques: [ 'T1552' ]
    entityMappings: [ accountFromIdentity, ipFromSourceIp ]
    customDetails: orgDetail
    alertPerResult: true
    groupIncidentsByOrg: false
    deploy: deployAnalyticRules
  }
  {
    key: 'esc-environment-deletion'
    displayName: 'Pulumi ESC - Environment Deleted or Deletion Protection Disabled'
    description: 'An ESC environment was deleted, or its deletion protection was disabled.'
    query: loadTextContent('../rules/esc-environment-deletion.kql')
    severity: 'Medium'
    queryFrequency: 'PT15M'
    queryPeriod: 'PT2H'
    tactics: [ 'Impact', 'DefenseEvasion' ]
    techniques: [ 'T1485', 'T1562' ]
    entityMappings: [ accountFromIdentity, ipFromSourceIp ]
    customDetails: orgDetail
    alertPerResult: true
    groupIncidentsByOrg: false
    deploy: deployAnalyticRules
  }
  {
    key: 'access-token-created-unusual-actor'
    displayName: 'Pulumi Cloud - Access Token Created by an Unusual Identity'
    description: 'An organization, team or personal access token was created by an identity that created no token in the organization during the previous 14 days (tokens exchanged through a registered OIDC issuer are left out).'
    query: loadTextContent('../rules/access-token-created-unusual-actor.kql')
    severity: 'Medium'
    queryFrequency: 'PT1H'
    queryPeriod: 'P14D'
    tactics: [ 'Persistence' ]
    techniques: [ 'T1098' ]
    entityMappings: [
      {
        entityType: 'Account'
        fieldMappings: [
          { identifier: 'Name', columnName: 'Creator' }
        ]
      }
      ipFromFirstSourceIp
    ]
    customDetails: orgDetail
    alertPerResult: true
    groupIncidentsByOrg: false
    deploy: deployAnalyticRules
  }
  {
    key: 'connector-silent'
    displayName: 'Pulumi audit connector - No Data from an Organization'
    description: 'The connector ingested no row for a Pulumi organization for 360 minutes (let silentFor = 360m in the query). Check the Function App logs, the token in Key Vault and the DCR role assignment. Quiet organizations can also trigger it.'
    query: loadTextContent('../rules/connector-silent.kql')
    severity: 'Low'
    queryFrequency: 'PT1H'
    queryPeriod: 'P1D'
    tactics: [ 'DefenseEvasion' ]
    techniques: [ 'T1562' ]
    entityMappings: []
    customDetails: orgDetail
    alertPerResult: true
    groupIncidentsByOrg: true
    deploy: deployHealthRules
  }
  {
    key: 'health-org-failing'
    displayName: 'Pulumi audit connector - Organization Failing Run After Run'
    description: 'The last 3 live runs of the connector failed for a Pulumi organization (let failedRunsInARow = 3 in the query). The health rows\' Error_s says why: a revoked or expired token, the Pulumi API, or Logs Ingestion refusing the upload.'
    query: loadTextContent('../rules/health-org-failing.kql')
    severity: 'Medium'
    queryFrequency: 'PT15M'
    queryPeriod: 'PT6H'
    tactics: [ 'DefenseEvasion' ]
    techniques: [ 'T1562' ]
    entityMappings: []
    customDetails: orgDetail
    alertPerResult: true
    groupIncidentsByOrg: true
    deploy: deployHealthRules
  }
  {
    key: 'health-lag-high'
    displayName: 'Pulumi audit connector - Organization Lagging Behind'
    description: 'The newest live run of a Pulumi organization reports its events more than 30 minutes behind (let maxLagMinutes = 30 in the query): the connector cannot keep up or keeps failing.'
    query: loadTextContent('../rules/health-lag-high.kql')
    severity: 'Low'
    queryFrequency: 'PT15M'
    queryPeriod: 'PT1H'
    tactics: [ 'DefenseEvasion' ]
    techniques: [ 'T1562' ]
    entityMappings: []
    customDetails: orgDetail
    alertPerResult: true
    groupIncidentsByOrg: true
    deploy: deployHealthRules
  }
  {
    key: 'health-dead-letters'
    displayName: 'Pulumi audit connector - Rows Dead-Lettered'
    description: 'Logs Ingestion refused rows of a Pulumi organization in the last hour; the connector kept them in its dead-letter table. Inspect them with python -m shared deadletter list and send them again with deadletter replay.'
    query: loadTextContent('../rules/health-dead-letters.kql')
    severity: 'Medium'
    queryFrequency: 'PT1H'
    queryPeriod: 'PT1H'
    tactics: [ 'DefenseEvasion' ]
    techniques: [ 'T1562' ]
    entityMappings: []
    customDetails: orgDetail
    alertPerResult: true
    groupIncidentsByOrg: true
    deploy: deployHealthRules
  }
  {
    key: 'health-connector-down'
    displayName: 'Pulumi audit connector - Connector Down'
    description: 'No health row for 15 minutes (let silentFor = 15m in the query): the connector is not running, for every organization or for one of the deployment\'s organizations, including one that never delivered anything.'
    query: replace(loadTextContent('../rules/health-connector-down.kql'), configuredOrgsPlaceholder, 'let ConfiguredOrgs = dynamic(${string(pulumiOrgs)});')
    severity: 'High'
    queryFrequency: 'PT5M'
    queryPeriod: 'P1D'
    tactics: [ 'DefenseEvasion' ]
    techniques: [ 'T1562' ]
    entityMappings: []
    customDetails: orgDetail
    alertPerResult: true
    groupIncidentsByOrg: true
    deploy: deployHealthRules
  }
]

// A rule whose query carries this copy's parameters (the org list) is keyed by baseName, so a second
// copy in the workspace adds its own rule instead of replacing the first copy's. Every other rule
// has the same content in every copy and is shared (docs/DEPLOY.md, "A second copy").
var perCopyRuleKeys = [
  'health-connector-down'
]

// `if(` without a space: pycep-parser 0.7.1 (tests/test_infra.py) rejects `: if (` inside a loop.
resource rules 'Microsoft.SecurityInsights/alertRules@2024-09-01' = [for rule in analyticRules: if(rule.deploy) {
  scope: workspace
  name: contains(perCopyRuleKeys, rule.key) ? guid(workspace.id, 'pulumi-audit-logs', rule.key, baseName) : guid(workspace.id, 'pulumi-audit-logs', rule.key)
  kind: 'Scheduled'
  properties: {
    displayName: contains(perCopyRuleKeys, rule.key) ? '${rule.displayName} (${baseName})' : rule.displayName
    description: rule.description
    enabled: true
    query: rule.query
    queryFrequency: rule.queryFrequency
    queryPeriod: rule.queryPeriod
    severity: rule.severity
    triggerOperator: 'GreaterThan'
    triggerThreshold: 0
    suppressionEnabled: false
    suppressionDuration: 'PT1H'
    tactics: rule.tactics
    techniques: rule.techniques
    entityMappings: empty(rule.entityMappings) ? null : rule.entityMappings
    customDetails: empty(rule.customDetails) ? null : rule.customDetails
    eventGroupingSettings: {
      aggregationKind: rule.alertPerResult ? 'AlertPerResult' : 'SingleAlert'
    }
    incidentConfiguration: {
      createIncident: true
      groupingConfiguration: {
        enabled: rule.groupIncidentsByOrg
        reopenClosedIncident: false
        lookbackDuration: 'P1D'
        matchingMethod: rule.groupIncidentsByOrg ? 'Selected' : 'AllEntities'
        groupByEntities: []
        groupByAlertDetails: []
        groupByCustomDetails: rule.groupIncidentsByOrg ? [ 'PulumiOrg' ] : []
      }
    }
  }
  dependsOn: [
    // Sentinel must be on the workspace. The tables (tables.bicep) come first: main.bicep deploys this module last.
    sentinelOnboarding
  ]
}]
