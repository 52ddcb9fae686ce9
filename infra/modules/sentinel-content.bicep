// What a Sentinel user sees of the connector, beside the tables and rules (workspace.bicep):
// the Data connectors page entry, the workbook, the ASIM Audit Event parser and the hunting
// queries. Each piece has its own switch. Deployed into the workspace's resource group after
// workspace.bicep, so the tables exist. Every query is a file under infra/ that the tests analyse.

@description('Name of the existing Log Analytics workspace.')
param workspaceName string

@description('Region of the workbook resource: the workspace region.')
param location string

@description('Show the connector on the Sentinel Data connectors page.')
param deployDataConnector bool

@description('Create the Pulumi audit workbook.')
param deployWorkbook bool

@description('Create the ASIM Audit Event parser (workspace function vimAuditEventPulumiCloud).')
param deployAsimParser bool

@description('Create the hunting queries.')
param deployHuntingQueries bool

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: workspaceName
}

// ----------------------------------------------------------------------------------------------
// Data connectors page: title, description, graphs for both tables, last data received and a
// connected status from the health table. The queries carry no comments: Sentinel wraps them.
// ----------------------------------------------------------------------------------------------

resource dataConnector 'Microsoft.SecurityInsights/dataConnectorDefinitions@2024-09-01' = if (deployDataConnector) {
  scope: workspace
  name: 'PulumiAuditConnector'
  kind: 'Customizable'
  properties: {
    connectorUiConfig: {
      // Every Microsoft definition sets the id to the definition's name.
      id: 'PulumiAuditConnector'
      title: 'Pulumi Cloud and Pulumi ESC audit logs (Azure Functions)'
      publisher: 'Pulumi audit connector'
      descriptionMarkdown: 'Forwards every Pulumi Cloud and Pulumi ESC audit event of your organizations to the **PulumiAuditLogs_CL** table, within about a minute, through an Azure Function and the Logs Ingestion API. Each run also writes one row per organization to **PulumiAuditConnectorHealth_CL** (status, events sent, lag, dead letters), which the connected status below, the health rules and the workbook\'s Connector health tab read.'
      graphQueries: [
        {
          metricName: 'Audit events received'
          legend: 'PulumiAuditLogs_CL'
          baseQuery: loadTextContent('../connector/graph-audit-events.kql')
        }
        {
          metricName: 'Health rows received'
          legend: 'PulumiAuditConnectorHealth_CL'
          baseQuery: loadTextContent('../connector/graph-health-rows.kql')
        }
      ]
      dataTypes: [
        {
          name: 'PulumiAuditLogs_CL'
          lastDataReceivedQuery: loadTextContent('../connector/last-audit-event.kql')
        }
        {
          name: 'PulumiAuditConnectorHealth_CL'
          lastDataReceivedQuery: loadTextContent('../connector/last-health-row.kql')
        }
      ]
      // Connected: a run delivered (status ok or stopped) for some organization in the last hour.
      connectivityCriteria: [
        {
          type: 'IsConnectedQuery'
          value: [
            loadTextContent('../connector/is-connected.kql')
          ]
        }
      ]
      availability: {
        status: 1
        isPreview: false
      }
      permissions: {
        resourceProvider: [
          {
            provider: 'Microsoft.OperationalInsights/workspaces'
            providerDisplayName: 'Workspace'
            permissionsDisplayText: 'Read and write permissions on the workspace are required.'
            scope: 'Workspace'
            requiredPermissions: {
              read: true
              write: true
              delete: false
              action: false
            }
          }
        ]
        customs: [
          {
            name: 'Pulumi Cloud access token'
            description: 'An organization access token that can read the audit logs of every organization to collect (audit logs need a Pulumi Business Critical or Enterprise edition).'
          }
          {
            name: 'Azure deployment'
            description: 'Contributor on a resource group for the Function App, and the right to create role assignments there (Owner, User Access Administrator or Role Based Access Control Administrator).'
          }
        ]
      }
      instructionSteps: [
        {
          title: 'Deploy the connector'
          description: 'The connector runs as an Azure Function in your subscription. Follow the deploy guide, the section **Deploy to Azure** of README.md in the connector\'s repository: it deploys infra/main.bicep, publishes the function code and verifies the first rows. docs/SENTINEL.md tours what then appears in Sentinel.'
          instructions: [
            {
              type: 'CopyableLabel'
              parameters: {
                label: 'Deploy into a resource group (edit infra/main.bicepparam first):'
                value: 'az deployment group create -g <resource-group> -f infra/main.bicep -p infra/main.bicepparam'
              }
            }
          ]
        }
        {
          title: 'Check it is running'
          description: 'Within a few minutes of the first timer run, this page shows Connected and the graphs fill. If it does not, the workbook\'s Connector health tab and the health rules say which organization fails and why; docs/SENTINEL.md explains each.'
          instructions: [
            {
              type: 'InfoMessage'
              parameters: {
                text: 'Connected means a run delivered events for some organization within the last hour (PulumiAuditConnectorHealth_CL, Status_s ok or stopped).'
                visible: true
                inline: true
              }
            }
          ]
        }
      ]
    }
  }
}

// ----------------------------------------------------------------------------------------------
// Workbook: time-range and organization parameters, four tabs. Its queries use the workbook
// parameters {TimeRange:start}, {TimeRange:end}, {TimeRange:grain} and {Org}.
// ----------------------------------------------------------------------------------------------

// Every query sets its own time filter ("Set in query", durationMs 0): events are selected by their
// original time EventTime_t, which a time context on TimeGenerated would hide for backfilled rows
// (Azure restamps their TimeGenerated later; never earlier, so TimeGenerated >= start still holds).
var logsQuery = {
  version: 'KqlItem/1.0'
  size: 0
  timeContext: {
    durationMs: 0
  }
  queryType: 0
  resourceType: 'microsoft.operationalinsights/workspaces'
}

var workbookContent = {
  version: 'Notebook/1.0'
  items: [
    {
      type: 1
      name: 'title'
      content: {
        json: '## Pulumi Cloud and Pulumi ESC audit logs\nEvents of the selected organizations, by their original time (EventTime_t), and the health of the connector that delivers them.'
      }
    }
    {
      type: 9
      name: 'parameters'
      content: {
        version: 'KqlParameterItem/1.0'
        style: 'pills'
        queryType: 0
        resourceType: 'microsoft.operationalinsights/workspaces'
        parameters: [
          {
            id: 'c5f1b0de-2f6a-4d59-9a53-2b1f6f3c0a01'
            version: 'KqlParameterItem/1.0'
            name: 'TimeRange'
            label: 'Time range'
            type: 4
            isRequired: true
            value: {
              durationMs: 86400000
            }
            typeSettings: {
              selectableValues: [
                { durationMs: 3600000 }
                { durationMs: 14400000 }
                { durationMs: 86400000 }
                { durationMs: 604800000 }
                { durationMs: 2592000000 }
              ]
              allowCustom: true
            }
          }
          {
            id: 'c5f1b0de-2f6a-4d59-9a53-2b1f6f3c0a02'
            version: 'KqlParameterItem/1.0'
            name: 'Org'
            label: 'Organization'
            type: 2
            isRequired: true
            multiSelect: true
            quote: '\''
            delimiter: ','
            query: loadTextContent('../workbook/organizations.kql')
            value: [
              'value::all'
            ]
            typeSettings: {
              additionalResourceOptions: [
                'value::all'
              ]
              selectAllValue: '*'
              showDefault: false
            }
            timeContext: {
              durationMs: 0
            }
            queryType: 0
            resourceType: 'microsoft.operationalinsights/workspaces'
          }
        ]
      }
    }
    {
      type: 11
      name: 'tabs'
      content: {
        version: 'LinkItem/1.0'
        style: 'tabs'
        links: [
          { id: 'tab-overview', cellValue: 'selectedTab', linkTarget: 'parameter', linkLabel: 'Overview', subTarget: 'overview', style: 'link' }
          { id: 'tab-esc', cellValue: 'selectedTab', linkTarget: 'parameter', linkLabel: 'ESC', subTarget: 'esc', style: 'link' }
          { id: 'tab-access', cellValue: 'selectedTab', linkTarget: 'parameter', linkLabel: 'Access', subTarget: 'access', style: 'link' }
          { id: 'tab-health', cellValue: 'selectedTab', linkTarget: 'parameter', linkLabel: 'Connector health', subTarget: 'health', style: 'link' }
        ]
      }
    }
    {
      type: 12
      name: 'overview'
      conditionalVisibility: { parameterName: 'selectedTab', comparison: 'isEqualTo', value: 'overview' }
      content: {
        version: 'NotebookGroup/1.0'
        groupType: 'editable'
        items: [
          {
            type: 3
            name: 'events-by-product'
            customWidth: '50'
            content: union(logsQuery, { title: 'Events by product', visualization: 'timechart', query: loadTextContent('../workbook/overview-events-by-product.kql') })
          }
          {
            type: 3
            name: 'events-by-org'
            customWidth: '50'
            content: union(logsQuery, { title: 'Events by organization', visualization: 'timechart', query: loadTextContent('../workbook/overview-events-by-org.kql') })
          }
          {
            type: 3
            name: 'events-by-category'
            content: union(logsQuery, { title: 'Events by category', visualization: 'barchart', query: loadTextContent('../workbook/overview-events-by-category.kql') })
          }
        ]
      }
    }
    {
      type: 12
      name: 'esc'
      conditionalVisibility: { parameterName: 'selectedTab', comparison: 'isEqualTo', value: 'esc' }
      content: {
        version: 'NotebookGroup/1.0'
        groupType: 'editable'
        items: [
          {
            type: 3
            name: 'esc-activity-over-time'
            content: union(logsQuery, { title: 'Environment opens, decrypts, rotations and unauthorized attempts', visualization: 'timechart', query: loadTextContent('../workbook/esc-activity-over-time.kql') })
          }
          {
            type: 3
            name: 'esc-activity-by-identity'
            content: union(logsQuery, { title: 'ESC activity by identity', visualization: 'table', query: loadTextContent('../workbook/esc-activity-by-identity.kql') })
          }
          {
            type: 3
            name: 'esc-unauthorized-attempts'
            content: union(logsQuery, { title: 'Unauthorized environment attempts', visualization: 'table', query: loadTextContent('../workbook/esc-unauthorized-attempts.kql') })
          }
        ]
      }
    }
    {
      type: 12
      name: 'access'
      conditionalVisibility: { parameterName: 'selectedTab', comparison: 'isEqualTo', value: 'access' }
      content: {
        version: 'NotebookGroup/1.0'
        groupType: 'editable'
        items: [
          {
            type: 3
            name: 'auth-failures-by-ip'
            content: union(logsQuery, { title: 'Authentication failures by source IP', visualization: 'table', query: loadTextContent('../workbook/access-auth-failures-by-ip.kql') })
          }
          {
            type: 3
            name: 'membership-and-role-changes'
            content: union(logsQuery, { title: 'Membership, team and role changes', visualization: 'table', query: loadTextContent('../workbook/access-membership-and-role-changes.kql') })
          }
          {
            type: 3
            name: 'token-creation'
            content: union(logsQuery, { title: 'Access tokens created and deleted', visualization: 'table', query: loadTextContent('../workbook/access-token-creation.kql') })
          }
        ]
      }
    }
    {
      type: 12
      name: 'health'
      conditionalVisibility: { parameterName: 'selectedTab', comparison: 'isEqualTo', value: 'health' }
      content: {
        version: 'NotebookGroup/1.0'
        groupType: 'editable'
        items: [
          {
            type: 3
            name: 'lag-per-org'
            customWidth: '50'
            content: union(logsQuery, { title: 'Lag per organization (minutes, live runs)', visualization: 'timechart', query: loadTextContent('../workbook/health-lag-per-org.kql') })
          }
          {
            type: 3
            name: 'runs-by-status'
            customWidth: '50'
            content: union(logsQuery, { title: 'Runs by status', visualization: 'barchart', query: loadTextContent('../workbook/health-runs-by-status.kql') })
          }
          {
            type: 3
            name: 'dead-letters'
            content: union(logsQuery, { title: 'Dead-lettered rows', visualization: 'table', query: loadTextContent('../workbook/health-dead-letters.kql') })
          }
          {
            type: 3
            name: 'delivered-per-run'
            content: union(logsQuery, { title: 'Delivered per run (latest 500)', visualization: 'table', query: loadTextContent('../workbook/health-delivered-per-run.kql') })
          }
        ]
      }
    }
  ]
  fallbackResourceIds: [
    workspace.id
  ]
  '$schema': 'https://github.com/Microsoft/Application-Insights-Workbooks/blob/master/schema/workbook.json'
}

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = if (deployWorkbook) {
  name: guid(workspace.id, 'pulumi-audit-workbook')
  location: location
  kind: 'shared'
  properties: {
    displayName: 'Pulumi Cloud and Pulumi ESC audit logs'
    category: 'sentinel'
    sourceId: workspace.id
    version: 'Notebook/1.0'
    serializedData: string(workbookContent)
  }
}

// ----------------------------------------------------------------------------------------------
// ASIM Audit Event parser: a workspace function with ASIM's filtering parameters.
// ----------------------------------------------------------------------------------------------

var asimParserName = 'vimAuditEventPulumiCloud'

resource asimParser 'Microsoft.OperationalInsights/workspaces/savedSearches@2025-02-01' = if (deployAsimParser) {
  parent: workspace
  name: asimParserName
  // '*' overwrites the saved search a previous deployment created; without it the PUT is refused
  // (409) and every redeployment fails.
  etag: '*'
  properties: {
    category: 'ASIM'
    displayName: 'Audit Event ASIM filtering parser for Pulumi Cloud and Pulumi ESC'
    query: loadTextContent('../parser/vimAuditEventPulumiCloud.kql')
    functionAlias: asimParserName
    functionParameters: 'starttime:datetime=datetime(null), endtime:datetime=datetime(null), srcipaddr_has_any_prefix:dynamic=dynamic([]), eventtype_in:dynamic=dynamic([]), eventresult:string=\'*\', actorusername_has_any:dynamic=dynamic([]), operation_has_any:dynamic=dynamic([]), object_has_any:dynamic=dynamic([]), newvalue_has_any:dynamic=dynamic([]), disabled:bool=false, pack:bool=false'
    version: 2
  }
}

// The same parser without filtering parameters, for ASIM's unifying parser ASimAuditEvent, which
// calls each source's parser with (disabled, pack) only.
var asimParserUnfilteredName = 'ASimAuditEventPulumiCloud'

resource asimParserUnfiltered 'Microsoft.OperationalInsights/workspaces/savedSearches@2025-02-01' = if (deployAsimParser) {
  parent: workspace
  name: asimParserUnfilteredName
  etag: '*'
  properties: {
    category: 'ASIM'
    displayName: 'Audit Event ASIM parser for Pulumi Cloud and Pulumi ESC'
    query: loadTextContent('../parser/ASimAuditEventPulumiCloud.kql')
    functionAlias: asimParserUnfilteredName
    functionParameters: 'disabled:bool=false, pack:bool=false'
    version: 2
  }
  dependsOn: [
    asimParser
  ]
}

// ----------------------------------------------------------------------------------------------
// PulumiAuditRawEvent: every audit row with RawEvent, the original event rebuilt from the typed
// columns and ExtraFields_s, for an analyst to read or export the event in full.
// ----------------------------------------------------------------------------------------------

resource rawEventFunction 'Microsoft.OperationalInsights/workspaces/savedSearches@2025-02-01' = {
  parent: workspace
  name: 'PulumiAuditRawEvent'
  etag: '*'
  properties: {
    category: 'Pulumi audit connector'
    displayName: 'Pulumi audit events with the original event rebuilt (RawEvent)'
    query: loadTextContent('../functions/PulumiAuditRawEvent.kql')
    functionAlias: 'PulumiAuditRawEvent'
    version: 2
  }
}

// ----------------------------------------------------------------------------------------------
// Hunting queries: saved searches in the "Hunting Queries" category, with MITRE tags. A query that
// calls the ASIM parser (usesParser) is created only with the parser.
// ----------------------------------------------------------------------------------------------

var huntingQueries = [
  {
    key: 'esc-secret-read-new-ip'
    displayName: 'Pulumi ESC - Secrets read from a new IP address'
    description: 'An identity opened or decrypted ESC environments from a source IP it had not used for that in the organization during the previous 14 days.'
    query: loadTextContent('../hunting/esc-secret-read-new-ip.kql')
    tactics: [ 'CredentialAccess' ]
    techniques: [ 'T1555', 'T1552' ]
    usesParser: false
  }
  {
    key: 'token-used-from-many-ips'
    displayName: 'Pulumi Cloud - Access token used from many IP addresses'
    description: 'One Pulumi access token used from 5 or more source IPs within a day: a token shared widely, or stolen.'
    query: loadTextContent('../hunting/token-used-from-many-ips.kql')
    tactics: [ 'CredentialAccess', 'DefenseEvasion' ]
    techniques: [ 'T1528', 'T1550' ]
    usesParser: false
  }
  {
    key: 'stack-deleted-off-hours'
    displayName: 'Pulumi Cloud - Stack deleted outside working hours'
    description: 'Stacks deleted before 08:00, from 18:00 (UTC) or on a weekend during the last 7 days; set the hours in the query.'
    query: loadTextContent('../hunting/stack-deleted-off-hours.kql')
    tactics: [ 'Impact' ]
    techniques: [ 'T1485' ]
    usesParser: false
  }
  {
    key: 'identity-first-environment-access'
    displayName: 'Pulumi ESC - First access of an identity to an environment'
    description: 'An identity read an ESC environment it had not read in the previous 30 days (through the ASIM parser vimAuditEventPulumiCloud).'
    query: loadTextContent('../hunting/identity-first-environment-access.kql')
    tactics: [ 'CredentialAccess', 'Discovery' ]
    techniques: [ 'T1555', 'T1526' ]
    usesParser: true
  }
  {
    key: 'policy-team-change-burst'
    displayName: 'Pulumi Cloud - Burst of policy, team or role changes'
    description: 'One identity made 5 or more policy, team or role changes within an hour.'
    query: loadTextContent('../hunting/policy-team-change-burst.kql')
    tactics: [ 'Persistence', 'DefenseEvasion' ]
    techniques: [ 'T1098', 'T1562' ]
    usesParser: false
  }
  {
    key: 'auth-failures-then-success'
    displayName: 'Pulumi Cloud - Authentication failures followed by success from one IP'
    description: 'A source IP with 3 or more failed authentications that then acted successfully in the same organization.'
    query: loadTextContent('../hunting/auth-failures-then-success.kql')
    tactics: [ 'CredentialAccess', 'InitialAccess' ]
    techniques: [ 'T1110', 'T1078' ]
    usesParser: false
  }
  {
    key: 'admin-actions-with-token'
    displayName: 'Pulumi Cloud - Organization admin actions done with an access token'
    description: 'Actions that need organization admin rights, done with an access token during the last 7 days, by token.'
    query: loadTextContent('../hunting/admin-actions-with-token.kql')
    tactics: [ 'Persistence', 'PrivilegeEscalation' ]
    techniques: [ 'T1078', 'T1098' ]
    usesParser: false
  }
  {
    key: 'rare-event-types'
    displayName: 'Pulumi Cloud - Event types new to an organization'
    description: 'Event types an organization produced in the last day and not once in the 30 days before.'
    query: loadTextContent('../hunting/rare-event-types.kql')
    tactics: [ 'Persistence', 'DefenseEvasion' ]
    techniques: [ 'T1098', 'T1562' ]
    usesParser: false
  }
  {
    key: 'bulk-secret-decryption'
    displayName: 'Pulumi Cloud - Unusual volume of secret decryptions'
    description: 'An identity decrypted stack secrets or ESC environments more than 5 times its daily average of the previous 14 days (and at least 20 times) in one day.'
    query: loadTextContent('../hunting/bulk-secret-decryption.kql')
    tactics: [ 'CredentialAccess', 'Collection' ]
    techniques: [ 'T1552', 'T1555' ]
    usesParser: false
  }
]

// `if(` without a space: pycep-parser 0.7.1 (tests/test_infra.py) rejects `: if (` inside a loop.
resource hunting 'Microsoft.OperationalInsights/workspaces/savedSearches@2025-02-01' = [for query in huntingQueries: if(deployHuntingQueries && (deployAsimParser || !query.usesParser)) {
  parent: workspace
  name: guid(workspace.id, 'pulumi-audit-hunting', query.key)
  // As for the parser: overwrite what a previous deployment created.
  etag: '*'
  properties: {
    category: 'Hunting Queries'
    displayName: query.displayName
    query: query.query
    version: 2
    tags: [
      { name: 'description', value: query.description }
      { name: 'tactics', value: join(query.tactics, ',') }
      { name: 'techniques', value: join(query.techniques, ',') }
    ]
  }
  dependsOn: [
    asimParser
  ]
}]
