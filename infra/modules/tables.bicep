// The custom tables PulumiAuditLogs_CL and PulumiAuditConnectorHealth_CL, alone in their module so
// that the DCR and the Function App wait for the tables only, never for the rules. Deployed into the
// workspace's resource group. Shared by every copy of the connector in the workspace (baseName does
// not key them: the code and every query name them).

@description('Name of the existing Log Analytics workspace.')
param workspaceName string

@minValue(4)
@maxValue(730)
param tableRetentionInDays int

@minValue(4)
@maxValue(4383)
param tableTotalRetentionInDays int

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: workspaceName
}

// Columns: shared/schema.py COLUMNS, same order and types (tests/test_infra.py checks it). The first
// 15 are the official Pulumi connector's, so its queries and workbooks run on this table unchanged.
resource table 'Microsoft.OperationalInsights/workspaces/tables@2025-02-01' = {
  parent: workspace
  name: 'PulumiAuditLogs_CL'
  properties: {
    plan: 'Analytics'
    retentionInDays: tableRetentionInDays
    totalRetentionInDays: tableTotalRetentionInDays
    schema: {
      name: 'PulumiAuditLogs_CL'
      description: 'Pulumi Cloud audit log events'
      columns: [
        { name: 'TimeGenerated', type: 'dateTime' }
        { name: 'Timestamp_d', type: 'long' }
        { name: 'SourceIP_s', type: 'string' }
        { name: 'Event_s', type: 'string' }
        { name: 'Description_s', type: 'string' }
        { name: 'UserName_s', type: 'string' }
        { name: 'UserLogin_s', type: 'string' }
        { name: 'UserAvatarUrl_s', type: 'string' }
        { name: 'TokenID_s', type: 'string' }
        { name: 'TokenName_s', type: 'string' }
        { name: 'ActorName_s', type: 'string' }
        { name: 'ActorUrn_s', type: 'string' }
        { name: 'RequireOrgAdmin_b', type: 'boolean' }
        { name: 'RequireStackAdmin_b', type: 'boolean' }
        { name: 'AuthFailure_b', type: 'boolean' }
        { name: 'OrgName_s', type: 'string' }
        { name: 'EventId_s', type: 'string' }
        { name: 'Product_s', type: 'string' }
        { name: 'Category_s', type: 'string' }
        { name: 'EventTime_t', type: 'dateTime' }
        { name: 'RawEvent_s', type: 'string' }
        { name: 'ExtraFields_s', type: 'string' }
      ]
    }
  }
}

// Columns: shared/schema.py HEALTH_TABLE, same order and types (tests/test_infra.py checks it).
// One row per Pulumi organization per connector run, whatever the run's outcome.
resource healthTable 'Microsoft.OperationalInsights/workspaces/tables@2025-02-01' = {
  parent: workspace
  name: 'PulumiAuditConnectorHealth_CL'
  properties: {
    plan: 'Analytics'
    retentionInDays: tableRetentionInDays
    totalRetentionInDays: tableTotalRetentionInDays
    schema: {
      name: 'PulumiAuditConnectorHealth_CL'
      description: 'One row per Pulumi organization per connector run'
      columns: [
        { name: 'TimeGenerated', type: 'dateTime' }
        { name: 'RunId_s', type: 'string' }
        { name: 'OrgName_s', type: 'string' }
        { name: 'RunKind_s', type: 'string' }
        { name: 'Status_s', type: 'string' }
        { name: 'EventsFetched_d', type: 'long' }
        { name: 'EventsSent_d', type: 'long' }
        { name: 'DuplicatesSkipped_d', type: 'long' }
        { name: 'DeadLettered_d', type: 'long' }
        { name: 'Truncated_d', type: 'long' }
        { name: 'LagSeconds_d', type: 'long' }
        { name: 'WatermarkTime_t', type: 'dateTime' }
        { name: 'Error_s', type: 'string' }
        { name: 'ConnectorVersion_s', type: 'string' }
        { name: 'Host_s', type: 'string' }
      ]
    }
  }
}

output tableName string = table.name
output healthTableName string = healthTable.name
